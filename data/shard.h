#pragma once
// Token shards: one HDF5 file each, written by `kvmtrain prepare`, read by the loader.
//   tokens       uint16 [n_tokens]     documents back to back, each followed by EOT; 64Ki chunks
//   doc_offsets  int64  [n_documents]  start of each document within tokens (first is 0)
//   attributes   format_version (int, 1), tokenizer (string), vocab_size (int), eot (int)
// A shard is written as NAME.tmp and renamed when complete, so a crashed write never looks like
// a shard: readers only ever consider files ending in ".h5".
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace data {

constexpr int kShardFormatVersion = 1;

struct ShardInfo {
  std::string tokenizer;
  int vocab_size = 0;  // ids are < vocab_size <= 65536 (they are stored as uint16)
  int eot = 0;
};

class ShardWriter {
 public:
  // Creates PATH.tmp; throws naming the path when it cannot.
  ShardWriter(std::string path, ShardInfo info);
  ~ShardWriter();  // an unfinished shard is removed, never renamed
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Appends one document: its ids (EOT not included; the writer adds it). Ids must be < vocab_size.
  void add_document(const uint32_t* ids, size_t n);
  // Flushes, closes and renames PATH.tmp to PATH.
  void finish();

  uint64_t tokens() const { return tokens_written_ + buf_.size(); }
  uint64_t documents() const { return doc_offsets_.size(); }
  const std::string& path() const { return path_; }

 private:
  void flush();  // buf_ -> the end of the tokens dataset
  std::string path_, tmp_path_;
  ShardInfo info_;
  hid_t file_ = -1, tokens_ = -1;
  std::vector<uint16_t> buf_;         // tokens not yet in the file (up to kFlushTokens)
  uint64_t tokens_written_ = 0;
  std::vector<int64_t> doc_offsets_;  // written at finish(): 8 bytes per document
};

class ShardReader {
 public:
  // Opens and validates PATH: an HDF5 file with both datasets and format_version 1, made by the
  // tokenizer `tokenizer` with `vocab_size` ids. Any failure throws one line naming the file.
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
  std::vector<int64_t> doc_offsets();  // the whole dataset (tests and tools)

 private:
  std::string path_;
  ShardInfo info_;
  hid_t file_ = -1, tokens_ = -1, space_ = -1;
  uint64_t n_tokens_ = 0, n_docs_ = 0;
  size_t cache_bytes_ = 0;
};

// The shards a source names, sorted: a directory (its *.h5 files), a glob, or one .h5 file.
// Only names ending in ".h5" count (so NAME.h5.tmp is ignored). Throws when none match.
std::vector<std::string> list_shards(const std::string& source);

}  // namespace data
