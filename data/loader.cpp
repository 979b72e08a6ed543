#include "data/loader.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "data/shard.h"

namespace data {

namespace {

// Open shards are kept for random windows (reopening one costs ~0.1 ms); these bound the file
// handles and the chunk caches (only compressed shards have one) whatever the number of shards.
constexpr size_t kMaxOpenShards = 64;
constexpr size_t kMaxCacheBytes = 256u << 20;
constexpr int kFeistelRounds = 6;

uint64_t mix(uint64_t x) {  // splitmix64's finaliser: a cheap, well-spread 64-bit hash
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A keyed bijection of [0, n): a balanced Feistel network on the smallest even number of bits
// covering n, cycle-walked until the value falls back into [0, n) (fewer than 4 steps on average).
uint64_t permute(uint64_t x, uint64_t n, uint64_t key) {
  int bits = 2;
  while (bits < 64 && (uint64_t(1) << bits) < n) bits += 2;
  const int half = bits / 2;
  const uint64_t mask = (uint64_t(1) << half) - 1;
  do {
    uint64_t l = x >> half, r = x & mask;
    for (int i = 0; i < kFeistelRounds; i++) {
      uint64_t t = l ^ (mix(r ^ mix(key + i)) & mask);
      l = r;
      r = t;
    }
    x = (l << half) | r;
  } while (x >= n);
  return x;
}

}  // namespace

struct Loader::Shard {
  std::string path;
  uint64_t first_window;  // windows of the source before this shard
  uint64_t stride;        // tokens from one window's start to the next: T, or doc_len
  bool masked;            // carries a loss_mask
};

struct Loader::SourceState {
  std::string name;          // as configured, for errors
  std::vector<Shard> shards;  // only those holding at least one window
  uint64_t windows = 0;      // per epoch
};

// The shards kept open, most recently used first: at most kMaxOpenShards, and chunk caches of at
// most kMaxCacheBytes together (the newest is always kept).
class Loader::ReaderCache {
 public:
  ReaderCache(std::string tokenizer, int vocab_size) : tokenizer_(std::move(tokenizer)), vocab_size_(vocab_size) {}
  ShardReader& get(const std::string& path) {
    auto it = std::find_if(open_.begin(), open_.end(), [&](const auto& r) { return r->path() == path; });
    if (it != open_.end()) {
      std::rotate(open_.begin(), it, it + 1);
    } else {
      open_.insert(open_.begin(), std::make_unique<ShardReader>(path, tokenizer_, vocab_size_));
      size_t cache = open_[0]->cache_bytes(), keep = 1;
      for (; keep < open_.size() && keep < kMaxOpenShards; keep++) {
        if (cache + open_[keep]->cache_bytes() > kMaxCacheBytes) break;
        cache += open_[keep]->cache_bytes();
      }
      open_.resize(keep);
    }
    return *open_.front();
  }

 private:
  std::string tokenizer_;
  int vocab_size_;
  std::vector<std::unique_ptr<ShardReader>> open_;
};

Loader::Loader(const LoaderOptions& options) : o_(options) {
  if (o_.batch_size < 1 || o_.seq_len < 1) throw std::runtime_error("loader: batch_size and seq_len must be >= 1");
  if (o_.world < 1 || o_.rank < 0 || o_.rank >= o_.world)
    throw std::runtime_error("loader: rank " + std::to_string(o_.rank) + " is not in [0, world " +
                             std::to_string(o_.world) + ")");
  if (o_.sources.empty()) throw std::runtime_error("loader: no data sources");
  double total_weight = 0;
  for (const auto& src : o_.sources) {
    if (!(src.weight > 0 && std::isfinite(src.weight)))
      throw std::runtime_error(src.path + ": source weight must be > 0, got " + std::to_string(src.weight));
    total_weight += src.weight;
    auto state = std::make_unique<SourceState>();
    state->name = src.path;
    for (const auto& path : list_shards(src.path)) {
      ShardReader r(path, o_.tokenizer, o_.vocab_size);  // validates every shard up front
      const int doc_len = r.info().doc_len;
      if (doc_len > 0 && doc_len != o_.seq_len + 1)
        throw std::runtime_error(path + ": its documents are doc_len " + std::to_string(doc_len) +
                                 " tokens, one window each, but train.seq_len + 1 is " + std::to_string(o_.seq_len + 1) +
                                 " (set train.seq_len to " + std::to_string(doc_len - 1) + ")");
      const uint64_t stride = doc_len > 0 ? uint64_t(doc_len) : uint64_t(o_.seq_len);
      uint64_t w = doc_len > 0 ? r.size() / stride : r.size() > 0 ? (r.size() - 1) / stride : 0;
      if (w == 0) continue;
      masked_ = masked_ || r.info().loss_mask;
      state->shards.push_back({path, state->windows, stride, r.info().loss_mask});
      state->windows += w;
    }
    if (state->windows == 0)
      throw std::runtime_error(src.path + ": its shards hold no window of seq_len+1 = " +
                               std::to_string(o_.seq_len + 1) + " tokens");
    sources_.push_back(std::move(state));
  }
  double acc = 0;
  for (const auto& src : o_.sources) cumulative_.push_back((acc += src.weight) / total_weight);
  cumulative_.back() = 1.0;
  draws_.assign(sources_.size(), 0);
  readers_ = std::make_unique<ReaderCache>(o_.tokenizer, o_.vocab_size);
  tokens_.resize(size_t(o_.seq_len) + 1);
  ready_.resize(size_t(o_.batch_size) * (o_.seq_len + 1));
  ready_mask_.resize(ready_.size());
  want_ = true;  // prefetch the first batch right away
  worker_ = std::thread([this] { prefetch_loop(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    quit_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

uint64_t Loader::windows_per_epoch() const {
  uint64_t n = 0;
  for (const auto& s : sources_) n += s->windows;
  return n;
}

uint64_t Loader::position() const {
  std::lock_guard<std::mutex> lock(mu_);
  return position_;
}

int Loader::epoch() const { return int(position() / windows_per_epoch()); }

void Loader::next(int32_t* out, uint8_t* mask) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return have_; });
  if (error_) std::rethrow_exception(error_);  // stays set: a failed stream keeps failing
  std::copy(ready_.begin(), ready_.end(), out);
  if (mask) std::copy(ready_mask_.begin(), ready_mask_.end(), mask);
  position_ += uint64_t(o_.world) * o_.batch_size;
  have_ = false;
  want_ = true;
  lock.unlock();
  cv_.notify_all();
}

void Loader::set_position(uint64_t position) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !want_; });  // let a fill in flight finish: it owns the readers
  position_ = position;
  have_ = false;
  want_ = true;
  error_ = nullptr;
  lock.unlock();
  cv_.notify_all();
}

void Loader::prefetch_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return want_ || quit_; });
    if (quit_) return;
    uint64_t base = position_;
    lock.unlock();
    std::exception_ptr err;
    try {
      fill(base, ready_.data(), ready_mask_.data());
    } catch (...) {
      err = std::current_exception();
    }
    lock.lock();
    error_ = err;
    want_ = false;
    have_ = true;
    cv_.notify_all();
  }
}

size_t Loader::choose(uint64_t g) const {
  double u = double(mix(o_.seed ^ mix(g)) >> 11) * 0x1.0p-53;
  return std::min(size_t(std::upper_bound(cumulative_.begin(), cumulative_.end(), u) - cumulative_.begin()),
                  cumulative_.size() - 1);
}

void Loader::fill(uint64_t base, int32_t* out, uint8_t* mask) {
  const uint64_t n = uint64_t(o_.world) * o_.batch_size;
  if (sources_.size() == 1) {
    draws_[0] = cursor_ = base;  // one source: draw c is global window c, no replay needed
  } else {
    if (base < cursor_) draws_.assign(draws_.size(), 0), cursor_ = 0;
    for (; cursor_ < base; cursor_++) draws_[choose(cursor_)]++;  // cheap: a hash per window
  }
  for (uint64_t i = 0; i < n; i++, cursor_++) {
    size_t s = sources_.size() == 1 ? 0 : choose(cursor_);
    uint64_t c = draws_[s]++;
    const size_t row = size_t(i / o_.world) * (o_.seq_len + 1);
    if (i % o_.world == uint64_t(o_.rank)) read_window(s, c, out + row, mask + row);
  }
}

void Loader::read_window(size_t s, uint64_t c, int32_t* out, uint8_t* mask) {
  const SourceState& src = *sources_[s];
  uint64_t epoch = c / src.windows, k = c % src.windows;
  if (o_.shuffle) k = permute(k, src.windows, mix(o_.seed ^ mix(s ^ mix(epoch))));
  auto it = std::upper_bound(src.shards.begin(), src.shards.end(), k,
                             [](uint64_t v, const Shard& sh) { return v < sh.first_window; }) - 1;
  ShardReader& reader = readers_->get(it->path);
  const uint64_t offset = (k - it->first_window) * it->stride;
  reader.read(offset, tokens_.size(), tokens_.data());
  std::copy(tokens_.begin(), tokens_.end(), out);
  if (it->masked) reader.read_mask(offset, tokens_.size(), mask);
  else std::fill(mask, mask + tokens_.size(), uint8_t(1));
}

}  // namespace data
