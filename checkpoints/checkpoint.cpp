#include "checkpoints/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include "common/dir_lock.h"
#include "common/file_io.h"
#include "common/sha256.h"

namespace fs = std::filesystem;

namespace ckpt {

namespace {

constexpr const char* kManifest = "manifest.json";

// step_ followed by exactly 8 digits (more when a step exceeds 99,999,999)
std::optional<int64_t> parse_step_dir(const std::string& name) {
  if (name.rfind("step_", 0) != 0 || name.size() < 13) return std::nullopt;
  int64_t s = 0;
  for (size_t i = 5; i < name.size(); i++) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    s = s * 10 + (name[i] - '0');
  }
  return s;
}

// The test hook of save(): "after_file" or "after_file:STEP".
bool crash_requested(int64_t step) {
  const char* v = std::getenv("KVMTRAIN_TEST_CRASH_IN_CHECKPOINT");
  if (!v) return false;
  std::string s = v;
  if (s == "after_file") return true;
  if (s.rfind("after_file:", 0) == 0) return std::atoll(s.c_str() + 11) == step;
  return false;
}

void remove_tree(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
  if (ec) throw std::runtime_error("cannot remove " + p.string() + ": " + ec.message());
}

}  // namespace

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", (long long)step);
  return buf;
}

std::string save(const std::string& root, int64_t step, const std::vector<File>& files, const json::Object& extra) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) throw std::runtime_error("cannot create checkpoint directory " + root + ": " + ec.message());
  // A save holds its temporary directory locked until the rename: one whose lock is free was
  // left by a save that died and is garbage; one still held is another live save's and stays
  // (issue 21: a save removed whatever .tmp-* it found).
  for (const auto& e : fs::directory_iterator(root))
    if (e.path().filename().string().rfind(".tmp-", 0) == 0 && HeldDirectory::try_hold(e.path().string()))
      remove_tree(e.path());

  const std::string name = step_dir_name(step);
  const fs::path tmp = fs::path(root) / (".tmp-" + name + "-" + std::to_string(::getpid()));
  const fs::path final_dir = fs::path(root) / name;
  fs::create_directory(tmp, ec);
  if (ec) throw std::runtime_error("cannot create " + tmp.string() + ": " + ec.message());
  const auto held = HeldDirectory::try_hold(tmp.string());
  if (!held) throw std::runtime_error(tmp.string() + ": held by another process");

  // a save that fails (a full disk) removes its own temporary directory: left behind, it would
  // hold the space a retry needs (issue 21)
  auto write_into_tmp = [&] {
    json::Object listing;
    for (size_t i = 0; i < files.size(); i++) {
      const File& f = files[i];
      if (f.name == kManifest || f.name.find('/') != std::string::npos)
        throw std::runtime_error("checkpoint file name not allowed: " + f.name);
      write_file_synced((tmp / f.name).string(), f.bytes);
      listing[f.name] = json::Object{{"bytes", uint64_t(f.bytes.size())}, {"sha256", data::sha256_hex(f.bytes)}};
      if (i == 0 && crash_requested(step)) {
        std::fprintf(stderr, "KVMTRAIN_TEST_CRASH_IN_CHECKPOINT: killing the process inside the checkpoint of step %lld\n",
                     (long long)step);
        std::fflush(stderr);
        std::raise(SIGKILL);
      }
    }
    json::Object manifest = extra;
    manifest["format_version"] = kFormatVersion;
    manifest["step"] = step;
    manifest["files"] = listing;
    write_file_synced((tmp / kManifest).string(), json::dump(manifest, 2) + "\n");
    fsync_dir(tmp.string());
  };
  try {
    write_into_tmp();
  } catch (...) {
    remove_tree(tmp);
    throw;
  }

  // an older checkpoint of this step (a run resumed from before it) is replaced
  if (fs::exists(final_dir)) {
    const fs::path old = fs::path(root) / (".tmp-old-" + name + "-" + std::to_string(::getpid()));
    const auto held_old = HeldDirectory::try_hold(final_dir.string());  // held through the rename
    fs::rename(final_dir, old);
    remove_tree(old);
  }
  fs::rename(tmp, final_dir);
  fsync_dir(root);
  return final_dir.string();
}

json::Value verify(const std::string& dir) {
  const std::string where = "checkpoint " + dir;
  const fs::path mpath = fs::path(dir) / kManifest;
  if (!fs::exists(mpath)) throw std::runtime_error(where + ": incomplete (no " + kManifest + ")");
  json::Value m;
  try {
    try {
      m = json::parse(read_file(mpath.string()));
    } catch (const std::exception& e) {  // a truncated or hand-edited manifest: name the file
      throw std::runtime_error(mpath.string() + ": " + e.what());
    }
    if (m.at("format_version").integer() > kFormatVersion)
      throw std::runtime_error("format_version " + std::to_string(m.at("format_version").integer()) +
                               " is newer than this kvmtrain reads (" + std::to_string(kFormatVersion) + ")");
    for (const auto& [name, entry] : m.at("files").object()) {
      const fs::path p = fs::path(dir) / name;
      if (!fs::exists(p)) throw std::runtime_error(p.string() + ": missing");
      const uint64_t want = uint64_t(entry.at("bytes").integer()), got = fs::file_size(p);
      if (got != want)
        throw std::runtime_error(p.string() + ": truncated or altered (" + std::to_string(got) + " bytes, manifest says " +
                                 std::to_string(want) + ")");
      if (data::sha256_file(p.string()) != entry.at("sha256").string())
        throw std::runtime_error(p.string() + ": sha256 does not match the manifest (corrupt)");
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(where + ": " + e.what());
  }
  return m;
}

std::vector<std::pair<int64_t, std::string>> list(const std::string& root) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root)) {
    auto step = parse_step_dir(e.path().filename().string());
    if (step && e.is_directory()) out.emplace_back(*step, e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string newest_complete(const std::string& root, std::vector<std::string>& warnings) {
  auto all = list(root);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    try {
      verify(it->second);
      return it->second;
    } catch (const std::exception& e) {
      warnings.push_back(std::string(e.what()) + "; falling back to the previous checkpoint");
    }
  }
  return "";
}

std::string resolve(const std::string& path, bool best, std::vector<std::string>& warnings) {
  if (fs::exists(fs::path(path) / kManifest)) {
    if (best) throw std::runtime_error(path + " is a checkpoint; --best takes a run directory");
    verify(path);
    return path;
  }
  std::string root = path;
  if (fs::is_directory(fs::path(path) / "checkpoints")) root = (fs::path(path) / "checkpoints").string();
  else if (list(path).empty())
    throw std::runtime_error(path + ": not a checkpoint (no manifest.json) nor a run directory (no checkpoints/)");
  if (best) {
    auto b = read_best(root);
    if (!b) throw std::runtime_error(root + "/best.json: missing (no checkpoint was saved at a validation step)");
    std::string dir = (fs::path(root) / step_dir_name(b->step)).string();
    verify(dir);
    return dir;
  }
  std::string dir = newest_complete(root, warnings);
  if (dir.empty()) {  // one line that keeps each checkpoint's reason (issue 21: they were dropped)
    std::string why;
    for (const auto& w : warnings) why += (why.empty() ? " (" : "; ") + w;
    throw std::runtime_error(root + ": no complete checkpoint" + (why.empty() ? "" : why + ")"));
  }
  return dir;
}

std::optional<Best> read_best(const std::string& root) {
  const fs::path p = fs::path(root) / "best.json";
  if (!fs::exists(p)) return std::nullopt;
  try {
    json::Value v = json::parse(read_file(p.string()));
    return Best{v.at("step").integer(), v.at("val_loss").number()};
  } catch (const std::exception& e) {
    throw std::runtime_error(p.string() + ": " + e.what());
  }
}

void write_best(const std::string& root, const Best& best) {
  json::Object o{{"step", best.step}, {"val_loss", best.val_loss}, {"checkpoint", step_dir_name(best.step)}};
  const std::string p = root + "/best.json", tmp = p + ".tmp";
  write_file_synced(tmp, json::dump(o, 2) + "\n");
  fs::rename(tmp, p);
  fsync_dir(root);
}

void remove_best(const std::string& root) {
  // a stale best.json that stays would name a checkpoint of another history: failing is an error
  const fs::path p = fs::path(root) / "best.json";
  std::error_code ec;
  fs::remove(p, ec);
  if (ec) throw std::runtime_error(p.string() + ": cannot remove the stale best checkpoint record (" + ec.message() + ")");
  fsync_dir(root);
}

void prune(const std::string& root, int keep_last, int64_t up_to_step, std::optional<int64_t> protect) {
  std::vector<std::pair<int64_t, std::string>> older;
  for (auto& c : list(root))
    if (c.first <= up_to_step) older.push_back(c);
  if (int(older.size()) <= keep_last) return;
  for (size_t i = 0; i + keep_last < older.size(); i++)
    if (!protect || older[i].first != *protect) remove_tree(older[i].second);
}

std::string read(const std::string& dir, const std::string& name) { return read_file((fs::path(dir) / name).string()); }

}  // namespace ckpt
