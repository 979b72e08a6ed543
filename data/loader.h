#pragma once
// The training data stream: (B, T+1) int32 windows out of token shards, deterministic, resumable
// and independent of the number of ranks.
//
// Windows: within each shard, window k is tokens [k*T, k*T + T + 1) (llm.c style: packed across
// documents), so a shard of n tokens holds floor((n - 1) / T) windows; in a shard of fixed-length
// documents (doc_len, data/shard.h) window k is document k, and doc_len must be T + 1. A source's
// windows are its shards' in sorted order. Each window comes with its loss mask: the shard's
// loss_mask values of its T + 1 tokens, all 1 for a shard without one. Per source and epoch the order is a keyed bijective
// permutation (a Feistel network with cycle-walking: O(1) memory whatever the dataset size).
// Global window g comes from source s(g) = a hash of (seed, g) against the cumulative weights; it
// is that source's c-th draw, c counting from 0 over g' < g with s(g') = s, and wraps into the
// source's next epoch when exhausted. Rank r of N takes global windows r, r+N, r+2N, ... from the
// position: N ranks with batch B together read exactly the windows of one process with batch N*B.
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace data {

struct Source {
  std::string path;     // a shard directory, a glob, or one .h5 file
  double weight = 1.0;  // share of the mixture (normalised over the sources)
};

struct LoaderOptions {
  std::vector<Source> sources;
  int batch_size;  // B: windows per next() on this rank
  int seq_len;     // T: a window holds T+1 tokens
  uint64_t seed;
  int rank = 0;
  int world = 1;
  bool shuffle = true;    // false: windows in order (validation)
  std::string tokenizer;  // what the model expects; a shard made otherwise is an error naming it
  int vocab_size;
};

class Loader {
 public:
  // Lists and validates every shard (format, tokenizer, vocab_size) and starts the prefetch thread.
  explicit Loader(const LoaderOptions& options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Fills out (B, T+1) with this rank's next batch, and mask (B, T+1) unless null with its loss
  // mask; rethrows a read error of the prefetch thread (e.g. a token id >= vocab_size, naming the
  // shard and offset).
  void next(int32_t* out, uint8_t* mask = nullptr);
  bool masked() const { return masked_; }  // some shard carries a loss_mask
  uint64_t position() const;  // global windows consumed: +world*B per next()
  void set_position(uint64_t position);  // exact resume, also with another world size or B
  uint64_t windows_per_epoch() const;  // all sources' windows together
  int epoch() const;  // position / windows_per_epoch (exact for one source; nominal for a mixture)

 private:
  struct Shard;
  struct SourceState;
  class ReaderCache;

  void fill(uint64_t base, int32_t* out, uint8_t* mask);  // the batch at global position `base`, replaying choices
  size_t choose(uint64_t g) const;         // the source of global window g
  void read_window(size_t s, uint64_t c, int32_t* out, uint8_t* mask);
  void prefetch_loop();
  void stop_prefetch();
  void start_prefetch();

  LoaderOptions o_;
  std::vector<std::unique_ptr<SourceState>> sources_;
  std::vector<double> cumulative_;     // normalised cumulative weights, last = 1
  std::vector<uint64_t> draws_;        // per source: windows drawn from it before cursor_
  uint64_t cursor_ = 0;                // the global window up to which draws_ is counted
  std::unique_ptr<ReaderCache> readers_;
  std::vector<uint16_t> tokens_;       // one window, as read: T+1
  bool masked_ = false;

  uint64_t position_ = 0;              // what next() returns next starts at this global window
  std::vector<int32_t> ready_;         // (B, T+1), the prefetched batch at position_
  std::vector<uint8_t> ready_mask_;    // (B, T+1), its loss mask
  std::thread worker_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool want_ = false, have_ = false, quit_ = false;
  std::exception_ptr error_;
};

}  // namespace data
