#pragma once
// The checkpoint directory format: <root>/step_NNNNNNNN/ (root = <log.dir>/checkpoints) holds
// named files and manifest.json {format_version, step, files: {name: {bytes, sha256}}, ...}.
// A checkpoint is complete exactly when its manifest exists and every file matches it. It is
// written as <root>/.tmp-step_NNNNNNNN-PID/, each file fsynced, the manifest last, then renamed
// into place and the root fsynced: a crash at any moment leaves every earlier checkpoint intact
// and at worst a temporary directory, which the next save removes. A save holds an flock on its
// temporary directory until the rename, and removes only leftovers whose lock is free: never the
// directory of a save still running in another process.
//
// This room knows files, not training: the trainer decides what the files hold
// (docs/checkpoint-format.md).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/json.h"

namespace ckpt {

constexpr int kFormatVersion = 1;

struct File {
  std::string name;   // a plain file name inside the checkpoint directory
  std::string bytes;
};

// "step_00001234"
std::string step_dir_name(int64_t step);

// Writes the checkpoint of `step` under `root` (created if needed) and returns its directory.
// `extra` is merged into manifest.json. An existing directory of the same step is replaced.
// Test hook: KVMTRAIN_TEST_CRASH_IN_CHECKPOINT=after_file[:STEP] kills the process (SIGKILL)
// after the first file of a checkpoint (of STEP, or any) is written, to test crash recovery.
std::string save(const std::string& root, int64_t step, const std::vector<File>& files, const json::Object& extra = {});

// Throws "checkpoint DIR: ..." naming the missing, truncated or corrupt file.
json::Value verify(const std::string& dir);

// The checkpoints under `root` (complete or not), ascending by step.
std::vector<std::pair<int64_t, std::string>> list(const std::string& root);

// The newest checkpoint under `root` that verifies, or "" when none does; each newer one that
// fails adds a warning line to `warnings` naming it and why.
std::string newest_complete(const std::string& root, std::vector<std::string>& warnings);

// CKPT_OR_RUN: a checkpoint directory (has manifest.json), a run directory (its checkpoints/),
// or a checkpoints root. A run means its newest complete checkpoint, or with `best` the one
// best.json names. The result is verified; errors name the path and what was expected.
std::string resolve(const std::string& ckpt_or_run, bool best, std::vector<std::string>& warnings);

// best.json: the checkpoint with the lowest validation loss.
struct Best {
  int64_t step;
  double val_loss;
};
std::optional<Best> read_best(const std::string& root);
void write_best(const std::string& root, const Best& best);  // atomic, fsynced
void remove_best(const std::string& root);

// Removes checkpoints of step <= up_to_step beyond the newest `keep_last` of them, except the
// step `protect` (the best); steps above up_to_step (left by a run resumed from earlier) stay
// until the run overwrites them.
void prune(const std::string& root, int keep_last, int64_t up_to_step, std::optional<int64_t> protect);

// Reads one file of a checkpoint directory.
std::string read(const std::string& dir, const std::string& name);

}  // namespace ckpt
