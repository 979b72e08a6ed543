#include "trainer/train/run_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

RunLog::RunLog(const std::string& dir) : path_(dir + "/log.jsonl") {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error("cannot open " + path_ + " for appending: " + std::strerror(errno));
}

RunLog::~RunLog() { ::close(fd_); }

namespace {

// The step a test hook (an environment variable) names for this row, or false.
bool hook_wants(const char* variable, const json::Object& row) {
  const char* v = std::getenv(variable);
  const auto step = row.find("step");
  return v && step != row.end() && step->second.integer() == std::atoll(v);
}

}  // namespace

// Unbuffered: a row is in the file whole or, after a failed write, cut off again; nothing of it
// waits in a buffer to be flushed later.
void RunLog::write(const json::Object& row) {
  const std::string line = json::dump(row) + "\n";
  const off_t before = ::lseek(fd_, 0, SEEK_END);
  // Test hooks. KVMTRAIN_TEST_CRASH_IN_LOG=STEP: half of step STEP's row is written, then the
  // process is killed (SIGKILL), as a crash mid-write. KVMTRAIN_TEST_FULL_LOG=STEP: half of it is
  // written, then the write fails as on a full disk.
  const bool crash = hook_wants("KVMTRAIN_TEST_CRASH_IN_LOG", row), full = hook_wants("KVMTRAIN_TEST_FULL_LOG", row);
  size_t done = 0;
  int err = 0;
  while (done < line.size()) {
    const size_t want = crash || full ? line.size() / 2 - done : line.size() - done;
    const ssize_t n = ::write(fd_, line.data() + done, want);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : EIO;
      break;
    }
    done += size_t(n);
    if (crash && done == line.size() / 2) {
      std::fprintf(stderr, "KVMTRAIN_TEST_CRASH_IN_LOG: killing the process inside the log row of step %lld\n",
                   (long long)row.at("step").integer());
      std::fflush(stderr);
      std::raise(SIGKILL);
    }
    if (full && done == line.size() / 2) {
      err = ENOSPC;
      break;
    }
  }
  if (!err) return;
  // drop the cut row (should that fail too, a resume drops it)
  const bool dropped = before >= 0 && ::ftruncate(fd_, before) == 0;
  throw std::runtime_error("cannot append to " + path_ + ": " + std::strerror(err) +
                           (dropped ? "" : " (the cut row is still there)"));
}

void write_file_atomic(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot write " + tmp + ": " + std::strerror(errno));
    out << text;
    if (!out.flush()) throw std::runtime_error("cannot write " + tmp + ": " + std::strerror(errno));
  }
  std::filesystem::rename(tmp, path);
}

void write_run_files(const std::string& dir, const std::string& resolved_yaml, const json::Object& info) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw std::runtime_error("cannot create log.dir " + dir + ": " + ec.message());
  write_file_atomic(dir + "/config.yaml", resolved_yaml);
  write_file_atomic(dir + "/run.json", json::dump(info, 2) + "\n");
}

std::string format_duration(double s) {
  char buf[32];
  if (!(s >= 0) || s > 1e8) return "?";
  long t = long(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

std::string format_count(double x) {
  char buf[32];
  if (x >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", x / 1e6);
  else if (x >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", x / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", x);
  return buf;
}
