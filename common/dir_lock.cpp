#include "common/dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "common/usage_error.h"

DirLock::DirLock(const std::string& dir, const std::string& what) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw UsageError(dir + ": cannot create the directory (" + ec.message() + ")");
  path_ = (std::filesystem::path(dir) / kFile).string();
  // The file is removed when the lock is released, so a lock taken on a file that a releasing
  // holder unlinked meanwhile is no lock: take it again on the file now at the path.
  while (true) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw UsageError(path_ + ": cannot open the lock file (" + std::strerror(errno) + ")");
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      char buf[32] = {};
      const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
      ::close(fd_);
      fd_ = -1;
      const std::string holder = n > 0 ? std::string(buf, size_t(n)) : std::string("unknown");
      throw UsageError(dir + ": in use by another kvmtrain process (pid " + holder + "); " + what +
                       " needs it alone: wait for that process to end, or choose another directory");
    }
    struct stat held {}, now {};
    if (::fstat(fd_, &held) == 0 && ::stat(path_.c_str(), &now) == 0 && held.st_dev == now.st_dev &&
        held.st_ino == now.st_ino)
      break;
    ::close(fd_);
  }
  const std::string pid = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != ssize_t(pid.size())) {
    const std::string why = std::strerror(errno);
    ::close(fd_);
    throw UsageError(path_ + ": cannot write the lock file (" + why + ")");
  }
}

DirLock::~DirLock() {
  ::unlink(path_.c_str());  // while still held: see the constructor
  ::close(fd_);             // closing releases the lock
}

std::unique_ptr<HeldDirectory> HeldDirectory::try_hold(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(dir + ": cannot open the directory (" + std::strerror(errno) + ")");
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return nullptr;
  }
  return std::unique_ptr<HeldDirectory>(new HeldDirectory(fd));
}

HeldDirectory::~HeldDirectory() { ::close(fd_); }
