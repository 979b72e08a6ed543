#pragma once
// The manifest `kvmtrain prepare` writes beside its shards, DIR/manifest.json: every shard's path
// (relative to DIR), split, token and document counts, file size and sha256. Two checks read it:
//   - verify_prepared (`kvmtrain prepare --verify DIR`): every shard's bytes against its sha256,
//     its counts, and no shard missing or unlisted. Reads every byte.
//   - check_source (train's start-up): the shards a data source names against the manifest found
//     beside them (DIR/manifest.json for DIR/train/...): sizes and counts only, so it is cheap.
// Shards with no manifest beside them (made by hand or by another tool) are not checked.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace data {

struct ManifestShard {
  std::string path;  // relative to the manifest's directory: "train/shard_00000.h5"
  std::string split;
  uint64_t tokens = 0, documents = 0;
  std::optional<uint64_t> bytes;  // manifests before issue 21 have no size
  std::string sha256;
};

struct Manifest {
  std::string dir;  // where manifest.json is
  std::string tokenizer;
  int vocab_size = 0;
  std::vector<ManifestShard> shards;
};

// Throws one line naming DIR/manifest.json and the field on a missing, truncated or malformed file.
Manifest read_manifest(const std::string& dir);

// What differs between one shard and its manifest entry ("" when nothing): the first of size,
// token count, document count and (with hash) sha256, with both values.
std::string shard_mismatch(const Manifest& m, const ManifestShard& s, bool hash);

// Every shard of DIR against DIR/manifest.json. Calls report(path, problem) once per shard, in
// the manifest's order, then for each .h5 file under DIR/train and DIR/val the manifest does not
// list; returns the number of problems.
size_t verify_prepared(const std::string& dir, const std::function<void(const std::string&, const std::string&)>& report);

// Train's start-up check of one source (a shard directory, a glob or a .h5 file): throws one line
// naming the first shard that is unlisted, missing (a directory source holds every shard of its
// split) or of another size or count than its manifest says.
void check_source(const std::string& source);

}  // namespace data
