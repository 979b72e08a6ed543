#include "data/manifest.h"

#include <filesystem>
#include <map>
#include <stdexcept>

#include "common/file_io.h"
#include "common/json.h"
#include "common/sha256.h"
#include "data/shard.h"

namespace fs = std::filesystem;

namespace data {

Manifest read_manifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / "manifest.json").string();
  const std::string text = ckpt::read_file(path);
  Manifest m;
  m.dir = dir;
  try {
    const json::Value v = json::parse(text);
    m.tokenizer = v.at("tokenizer").string();
    m.vocab_size = int(v.at("vocab_size").integer());
    for (const json::Value& f : v.at("files").array()) {
      ManifestShard s;
      s.path = f.at("path").string();
      s.split = f.at("split").string();
      s.tokens = uint64_t(f.at("tokens").integer());
      s.documents = uint64_t(f.at("documents").integer());
      if (f.contains("bytes")) s.bytes = uint64_t(f.at("bytes").integer());
      s.sha256 = f.at("sha256").string();
      m.shards.push_back(s);
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": not a prepare manifest (" + e.what() + "); run kvmtrain prepare again");
  }
  return m;
}

std::string shard_mismatch(const Manifest& m, const ManifestShard& s, bool hash) {
  const std::string file = (fs::path(m.dir) / s.path).string();
  std::error_code ec;
  const uint64_t bytes = fs::file_size(file, ec);
  if (ec) return "missing (" + ec.message() + ")";
  auto differs = [](const char* what, uint64_t now, uint64_t listed) {
    return std::string(what) + " " + std::to_string(now) + ", the manifest says " + std::to_string(listed);
  };
  if (s.bytes && bytes != *s.bytes) return differs("bytes", bytes, *s.bytes);
  try {
    ShardReader r(file, m.tokenizer, m.vocab_size);
    if (r.size() != s.tokens) return differs("tokens", r.size(), s.tokens);
    if (r.documents() != s.documents) return differs("documents", r.documents(), s.documents);
  } catch (const std::exception& e) {
    return e.what();
  }
  if (hash) {
    const std::string sum = sha256_file(file);
    if (sum != s.sha256) return "sha256 " + sum + ", the manifest says " + s.sha256;
  }
  return "";
}

namespace {

// The manifest-relative paths of the .h5 files under DIR/train and DIR/val.
std::vector<std::string> shards_on_disk(const std::string& dir) {
  std::vector<std::string> out;
  for (const char* split : {"train", "val"}) {
    std::error_code ec;
    if (!fs::is_directory(fs::path(dir) / split, ec)) continue;
    for (const std::string& p : list_shards((fs::path(dir) / split).string()))
      out.push_back(std::string(split) + "/" + fs::path(p).filename().string());
  }
  return out;
}

}  // namespace

size_t verify_prepared(const std::string& dir, const std::function<void(const std::string&, const std::string&)>& report) {
  const Manifest m = read_manifest(dir);
  size_t problems = 0;
  std::map<std::string, bool> listed;
  for (const ManifestShard& s : m.shards) {
    listed[s.path] = true;
    const std::string why = shard_mismatch(m, s, true);
    problems += !why.empty();
    report(s.path, why);
  }
  for (const std::string& p : shards_on_disk(dir))
    if (!listed.count(p)) {
      problems++;
      report(p, "not in the manifest");
    }
  return problems;
}

void check_source(const std::string& source) {
  std::map<fs::path, std::optional<Manifest>> manifests;  // by prepared directory
  auto manifest_of = [&](const fs::path& dir) -> const std::optional<Manifest>& {
    auto it = manifests.find(dir);
    if (it != manifests.end()) return it->second;
    std::error_code ec;
    std::optional<Manifest> m;
    if (fs::exists(dir / "manifest.json", ec)) m = read_manifest(dir.string());
    return manifests[dir] = m;
  };
  auto fail = [](const fs::path& dir, const std::string& file, const std::string& why) {
    throw std::runtime_error(file + ": " + why + " (" + (dir / "manifest.json").string() + "); run kvmtrain prepare --verify " +
                             dir.string() + ", or prepare the data again");
  };
  // the manifest of a prepared directory is one level above its split directories
  for (const std::string& f : list_shards(source)) {
    const fs::path split_dir = fs::path(f).parent_path(), dir = split_dir.parent_path();
    const auto& m = manifest_of(dir);
    if (!m) continue;
    const std::string rel = split_dir.filename().string() + "/" + fs::path(f).filename().string();
    const ManifestShard* listed = nullptr;
    for (const ManifestShard& s : m->shards)
      if (s.path == rel) listed = &s;
    if (!listed) fail(dir, f, "a shard the manifest does not list");
    const std::string why = shard_mismatch(*m, *listed, false);
    if (!why.empty()) fail(dir, f, why);
  }
  std::error_code ec;
  if (!fs::is_directory(source, ec)) return;
  // a directory source is the whole split: none of its shards may be missing
  fs::path split_dir = fs::path(source).lexically_normal();
  if (split_dir.filename().empty()) split_dir = split_dir.parent_path();  // "DIR/train/"
  const fs::path dir = split_dir.parent_path();
  const auto& m = manifest_of(dir);
  if (m)
    for (const ManifestShard& s : m->shards)
      if (s.split == split_dir.filename().string() && !fs::exists(dir / s.path, ec))
        fail(dir, (dir / s.path).string(), "missing");
}

}  // namespace data
