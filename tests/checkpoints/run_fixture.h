#pragma once
// A tiny byte-level run for the checkpoint CLI tests: prepared data, a config, and helpers to run
// kvmtrain in the background, signal it, and read a run's losses from log.jsonl.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/json.h"
#include "tests/test_util.h"

namespace ckpt_test {

namespace fs = std::filesystem;

// Prepares byte-tokenized text under `dir` and writes dir/tiny.yaml: 2 layers of width 64,
// `steps` steps, a checkpoint and a validation every 4 steps, 3 checkpoints kept.
inline void make_run_fixture(const fs::path& dir, int steps) {
  fs::remove_all(dir);
  fs::create_directories(dir / "text");
  const char* lines[] = {"the cat sat on the mat. ", "a dog ran in the park. ", "we like to read books. "};
  for (int d = 0; d < 8; d++) {
    std::ofstream f(dir / "text" / ("doc" + std::to_string(d) + ".txt"));
    for (int i = 0; i < 80; i++) f << lines[(d + i) % 3];
  }
  auto r = test_util::kvmtrain("prepare --quiet --tokenizer byte --input " + (dir / "text").string() + " --output " +
                                   (dir / "data").string(), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  std::ofstream(dir / "tiny.yaml") << "model: {vocab_size: 257, n_layer: 2, n_head: 2, d_model: 64, max_seq_len: 64}\n"
                                      "data: {train: " << (dir / "data/train").string() << ", val: "
                                   << (dir / "data/val").string() << ", tokenizer: byte}\n"
                                   "train: {batch_size: 4, seq_len: 64, steps: " << steps << ", lr: 3e-3, warmup_steps: 3,\n"
                                   "        eval_every: 4, eval_steps: 1, sample_tokens: 0}\n"
                                   "checkpoint: {every: 4, keep_last: 3}\n"
                                   "log: {dir: " << (dir / "run").string() << ", print_every: 1000}\n";
}

// The rows of a log.jsonl.
inline std::vector<json::Value> log_rows(const fs::path& log) {
  std::ifstream in(log);
  std::vector<json::Value> rows;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(json::parse(line));
  return rows;
}

inline size_t count_lines(const fs::path& p) {
  std::ifstream in(p);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n++;
  return n;
}

// Step, loss and val_loss of every row must be identical (bit for bit: %.9g round-trips floats).
inline void expect_same_losses(const fs::path& got, const fs::path& want) {
  auto a = log_rows(got), b = log_rows(want);
  ASSERT_EQ(a.size(), b.size()) << got;
  for (size_t i = 0; i < a.size(); i++) {
    ASSERT_EQ(a[i].at("step").integer(), b[i].at("step").integer()) << "row " << i;
    ASSERT_EQ(a[i].at("loss").number(), b[i].at("loss").number()) << "step " << i + 1;
    ASSERT_EQ(a[i].at("lr").number(), b[i].at("lr").number()) << "step " << i + 1;
    ASSERT_EQ(a[i].contains("val_loss"), b[i].contains("val_loss")) << "step " << i + 1;
    if (a[i].contains("val_loss")) {
      ASSERT_EQ(a[i].at("val_loss").number(), b[i].at("val_loss").number()) << "step " << i + 1;
    }
  }
}

// `$KVMTRAIN_BIN args` in the background (stdout/stderr to dir/bg.out, dir/bg.err).
inline pid_t spawn(const std::string& args, const fs::path& dir) {
  const char* bin = std::getenv("KVMTRAIN_BIN");
  std::string cmd = "exec " + std::string(bin ? bin : "kvmtrain") + " " + args + " >" + (dir / "bg.out").string() +
                    " 2>" + (dir / "bg.err").string();
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
    _exit(127);
  }
  return pid;
}

// Waits until `log` has at least `rows` lines (or the process ended); true if it is still running.
inline bool wait_for_rows(pid_t pid, const fs::path& log, size_t rows) {
  for (int i = 0; i < 60000; i++) {
    if (count_lines(log) >= rows) return true;
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  return false;
}

inline int wait_status(pid_t pid) {
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

}  // namespace ckpt_test
