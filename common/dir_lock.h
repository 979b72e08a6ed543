#pragma once
// One kvmtrain process at a time writes a directory (a run's log.dir, an export's --output, a
// sweep's out): an advisory lock (flock) on DIR/.kvmtrain.lock, held for the DirLock's life and
// released by the kernel when the process ends however it ends, so a crashed holder never blocks
// a retry. The lock file holds the holder's pid and is removed on release (one left by a killed
// process is harmless); the descriptor is close-on-exec, so child processes (a sweep's runs) do
// not hold it.
#include <memory>
#include <string>

class DirLock {
 public:
  // Creates dir if needed and takes its lock. Throws UsageError naming dir, `what` wants it for,
  // and the pid of the process that holds it.
  DirLock(const std::string& dir, const std::string& what);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

  static constexpr const char* kFile = ".kvmtrain.lock";

 private:
  std::string path_;
  int fd_ = -1;
};

// An flock on a directory's own inode (no file added to it), held for the object's life and
// released by the kernel when the process ends. A checkpoint save holds one on its temporary
// directory, so that a leftover one can be told apart: free means its writer is dead.
class HeldDirectory {
 public:
  // Takes the lock of `dir`, or returns nullptr when another open description holds it. Throws
  // naming dir when it cannot be opened.
  static std::unique_ptr<HeldDirectory> try_hold(const std::string& dir);
  ~HeldDirectory();
  HeldDirectory(const HeldDirectory&) = delete;
  HeldDirectory& operator=(const HeldDirectory&) = delete;

 private:
  explicit HeldDirectory(int fd) : fd_(fd) {}
  int fd_;
};
