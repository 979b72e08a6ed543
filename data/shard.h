#pragma once
// Token shards: one HDF5 file each, written by `kvmtrain prepare`, read by the loader.
//   tokens       uint16 [n_tokens]     documents back to back, each followed by EOT; 64Ki chunks
//   doc_offsets  int64  [n_documents]  start of each document within tokens (first is 0)
//   loss_mask    uint8  [n_tokens]     optional, chunked as tokens: 1 where token i is a scored
//                                      target (the loss of predicting it from the tokens before it
//                                      counts), 0 where it is not; without it every target is scored
//   attributes   format_version (int, 1 or 2), tokenizer (string), vocab_size (int), eot (int),
//                doc_len (int, optional): every document is exactly doc_len tokens, with no EOT
//                after it, and the loader's window k is document k (so train.seq_len + 1 must be
//                doc_len)
// format_version 2 marks a shard that has a loss_mask or doc_len (a version-1 reader would ignore
// them and misalign or score what is masked); a shard with neither is written as version 1,
// byte for byte as before. Both versions are read.
// A shard is written as NAME.tmp and renamed when complete, so a crashed write never looks like
// a shard: readers only ever consider files ending in ".h5".
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace data {

constexpr int kShardFormatVersion = 1;        // a shard of EOT-separated documents, no mask
constexpr int kShardFormatVersionMasked = 2;  // one with a loss_mask or fixed-length documents

struct ShardInfo {
  std::string tokenizer;
  int vocab_size = 0;  // ids are < vocab_size <= 65536 (they are stored as uint16)
  int eot = 0;
  int doc_len = 0;         // > 0: every document is exactly doc_len tokens and has no EOT after it
  bool loss_mask = false;  // the shard carries a loss_mask dataset
  int format_version() const { return doc_len > 0 || loss_mask ? kShardFormatVersionMasked : kShardFormatVersion; }
};

class ShardWriter {
 public:
  // Creates PATH.tmp; throws naming the path when it cannot.
  ShardWriter(std::string path, ShardInfo info);
  ~ShardWriter();  // an unfinished shard is removed, never renamed
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Appends one document: its ids (EOT not included; the writer adds it unless info.doc_len > 0,
  // when n must be doc_len). Ids must be < vocab_size. With info.loss_mask, `mask` holds n values
  // 0 or 1 (the EOT the writer adds is scored: predicting a document's end is a target); without
  // it, mask must be null.
  void add_document(const uint32_t* ids, size_t n, const uint8_t* mask = nullptr);
  // Flushes, closes and renames PATH.tmp to PATH.
  void finish();

  uint64_t tokens() const { return tokens_written_ + buf_.size(); }
  uint64_t documents() const { return doc_offsets_.size(); }
  const std::string& path() const { return path_; }

 private:
  void flush();  // buf_ (and mask_buf_) -> the end of the tokens (and loss_mask) dataset
  std::string path_, tmp_path_;
  ShardInfo info_;
  hid_t file_ = -1, tokens_ = -1, mask_ = -1;
  std::vector<uint16_t> buf_;         // tokens not yet in the file (up to kFlushTokens)
  std::vector<uint8_t> mask_buf_;     // their mask values (info_.loss_mask)
  uint64_t tokens_written_ = 0;
  std::vector<int64_t> doc_offsets_;  // written at finish(): 8 bytes per document
};

class ShardReader {
 public:
  // Opens and validates PATH: an HDF5 file with both datasets and format_version 1 or 2 (a
  // loss_mask as long as tokens, a doc_len that divides it), made by the tokenizer `tokenizer`
  // with `vocab_size` ids. Any failure throws one line naming the file.
  ShardReader(const std::string& path, const std::string& tokenizer, int vocab_size);
  ~ShardReader();
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  uint64_t size() const { return n_tokens_; }  // tokens
  uint64_t documents() const { return n_docs_; }
  const ShardInfo& info() const { return info_; }
  const std::string& path() const { return path_; }
  size_t cache_bytes() const { return cache_bytes_; }  // its HDF5 chunk cache: 0, or 64 MiB if compressed
  // Reads tokens [offset, offset + n) by hyperslab; throws naming the file and the offset of an
  // id >= vocab_size (checked window by window as it is read: corrupt data never reaches a model).
  void read(uint64_t offset, size_t n, uint16_t* out);
  // Reads loss_mask [offset, offset + n) (info().loss_mask only); throws naming the file and the
  // offset of a value other than 0 or 1.
  void read_mask(uint64_t offset, size_t n, uint8_t* out);
  std::vector<int64_t> doc_offsets();  // the whole dataset (tests and tools)

 private:
  std::string path_;
  ShardInfo info_;
  hid_t file_ = -1, tokens_ = -1, space_ = -1, mask_ = -1;
  uint64_t n_tokens_ = 0, n_docs_ = 0;
  size_t cache_bytes_ = 0;
};

// The shards a source names, sorted: a directory (its *.h5 files), a glob, or one .h5 file.
// Only names ending in ".h5" count (so NAME.h5.tmp is ignored). Throws when none match.
std::vector<std::string> list_shards(const std::string& source);

}  // namespace data
