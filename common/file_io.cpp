#include "common/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace ckpt {

namespace {
[[noreturn]] void fail(const std::string& what, const std::string& path) {
  throw std::runtime_error(what + " " + path + ": " + std::strerror(errno));
}
}  // namespace

void write_file_synced(const std::string& path, const void* bytes, size_t n) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create", path);
  const char* p = static_cast<const char*>(bytes);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int e = errno;
      ::close(fd);
      errno = e;
      fail("cannot write", path);
    }
    p += w;
    n -= size_t(w);
  }
  if (::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    errno = e;
    fail("cannot fsync", path);
  }
  if (::close(fd) != 0) fail("cannot close", path);
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail("cannot open directory", dir);
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  errno = e;
  if (rc != 0) fail("cannot fsync directory", dir);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read", path);
  std::string s((std::istreambuf_iterator<char>(in)), {});
  if (in.bad()) fail("cannot read", path);
  return s;
}

}  // namespace ckpt
