#pragma once
// Durable file writes for checkpoints: every byte that a checkpoint's manifest vouches for must be
// on disk before the manifest is, so writes are fsynced, and so are the directories that name them
// (a rename is only durable once its parent directory is synced).
#include <string>

namespace ckpt {

// Creates (truncates) `path`, writes `bytes`, fsyncs and closes it; throws naming the path.
void write_file_synced(const std::string& path, const void* bytes, size_t n);
inline void write_file_synced(const std::string& path, const std::string& bytes) {
  write_file_synced(path, bytes.data(), bytes.size());
}
// fsync of a directory, so that entries created or renamed in it survive a crash.
void fsync_dir(const std::string& dir);
// The whole file; throws "cannot read PATH: reason".
std::string read_file(const std::string& path);

}  // namespace ckpt
