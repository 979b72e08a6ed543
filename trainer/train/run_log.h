#pragma once
// What a run leaves in <log.dir>: log.jsonl (one object per step, flushed every step, appended
// on resume), config.yaml (the resolved config) and run.json (commit, world size, device,
// precision); and the one-line progress display on stdout.
#include <cstdio>
#include <string>

#include "common/json.h"

class RunLog {
 public:
  explicit RunLog(const std::string& dir);
  ~RunLog();
  // Appends one row and flushes it. A row that cannot be written whole (a full disk) is cut off
  // again and throws std::runtime_error naming the file: log.jsonl never ends mid-line, and the
  // run stops instead of going on without its log.
  void write(const json::Object& row);

 private:
  std::string path_;
  int fd_ = -1;
};

// Creates `dir` and writes config.yaml and run.json there (each through a temporary name).
void write_run_files(const std::string& dir, const std::string& resolved_yaml, const json::Object& info);
// Writes `text` to `path` through `path.tmp` and a rename, so a reader never sees half a file.
void write_file_atomic(const std::string& path, const std::string& text);

// "1h02m", "3m05s", "12s"
std::string format_duration(double seconds);
// "12.3k"
std::string format_count(double x);
