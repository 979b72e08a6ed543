#include "trainer/train/run_log.h"

#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

RunLog::RunLog(const std::string& dir) : path_(dir + "/log.jsonl") {
  f_ = std::fopen(path_.c_str(), "a");
  if (!f_) throw std::runtime_error("cannot open " + path_ + " for appending: " + std::strerror(errno));
}

// Test hook: KVMTRAIN_TEST_CRASH_IN_LOG=STEP writes half of step STEP's row, flushes it and
// kills the process (SIGKILL), to test that a resume drops the cut row.
void RunLog::crash_if_requested(const json::Object& row, const std::string& line) {
  const char* v = std::getenv("KVMTRAIN_TEST_CRASH_IN_LOG");
  const auto step = row.find("step");
  if (!v || step == row.end() || step->second.integer() != std::atoll(v)) return;
  std::fwrite(line.data(), 1, line.size() / 2, f_);
  std::fflush(f_);
  std::fprintf(stderr, "KVMTRAIN_TEST_CRASH_IN_LOG: killing the process inside the log row of step %s\n", v);
  std::fflush(stderr);
  std::raise(SIGKILL);
}

RunLog::~RunLog() {
  if (f_) std::fclose(f_);
}

void RunLog::write(const json::Object& row) {
  const std::string line = json::dump(row) + "\n";
  crash_if_requested(row, line);
  const long before = std::ftell(f_);
  if (std::fwrite(line.data(), 1, line.size(), f_) == line.size() && std::fflush(f_) == 0) return;
  const int err = errno;
  std::clearerr(f_);
  if (before >= 0 && ftruncate(fileno(f_), before) == 0) std::fseek(f_, 0, SEEK_END);  // drop the cut row
  throw std::runtime_error("cannot append to " + path_ + ": " + std::strerror(err));
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
