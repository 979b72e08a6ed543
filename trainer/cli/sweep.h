#pragma once
// `kvmtrain sweep SWEEP.yaml`: one base config, a grid or a list of overrides, one run directory
// per run, trained one after another as child processes (`kvmtrain train`, optionally under
// mpiexec), resumable, and summarised as CSV, Markdown, JSON and one loss-curve PNG.
//
//   base: ../configs/paper/cpu/kvm256.yaml   # relative to the sweep file
//   out: runs/sweeps/ablations               # the sweep directory (relative to the working dir)
//   set: {train.steps: 200}                  # overrides of every run (optional)
//   grid: {model.kvm.sink: [0, 1], train.lr: [1e-3, 2e-3]}    # cartesian product, or
//   runs: [{name: no_sink, set: {model.kvm.sink: 0}}, ...]    # an explicit list
//   mpirun_np: 2                             # optional: each run under mpiexec -n 2
//   prepare: ["--synthetic mqar ... --output data/x"]  # optional: `kvmtrain prepare` argument
//                                            # lines run first, each unless its --output is ready
//   eval: [recall]                           # optional: `kvmtrain eval RUN --task T` after each run;
//                                            # its accuracy becomes a summary column
//   runs: [{name: a, set: {...}, tags: {mixer: attn, pairs: 16}}]   # tags: for the plot
//   plot: {x: pairs, y: recall_accuracy, lines: mixer}   # optional: <out>/<y>_vs_<x>.png
// Grid runs are tagged by their axes (the key's last part: model.kvm.sink -> sink).
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "trainer/config/config.h"

namespace sweep {

using Overrides = std::vector<std::pair<std::string, std::string>>;  // key, YAML value text

struct Run {
  std::string name;     // also the directory name under Sweep::out
  Overrides overrides;  // the run's own (the sweep's `set:` comes first, then these)
  Overrides tags;       // name, value: what the run stands for in a plot
};

struct Plot {
  std::string x, y, lines;  // x and lines: tag names; y: a summary column
};

struct Sweep {
  std::string file;  // the sweep file
  std::string base;  // the base config, resolved against the sweep file's directory
  std::string out;   // the sweep directory
  Overrides common;  // `set:`
  std::vector<Run> runs;
  int mpirun_np = 0;  // 0: a plain child process
  std::vector<std::vector<std::string>> prepare;  // argument lists of `kvmtrain prepare`
  std::vector<std::string> evals;                  // eval tasks after each run: "recall"
  std::optional<Plot> plot;
};

// Parses and checks a sweep file; every error is one line naming the file (and line) and throws
// UsageError. `out` (non-empty) replaces the file's `out:`.
Sweep load(const std::string& path, const std::string& out = "");

// The --set list of run `r` as the sweep will train it: common, run overrides, log.dir, and
// checkpoint.every when the config leaves it 0 (single-process runs only).
std::vector<std::string> train_overrides(const Sweep& s, const Run& r);
// The resolved config of run `r` (checks every key; errors name the run).
config::Config run_config(const Sweep& s, const Run& r);

// What a run's directory says about it.
struct Result {
  std::string status;  // "done", "partial" (some steps logged), "pending" (nothing), "failed"
  int64_t steps_done = 0, steps_total = 0;
  std::optional<double> final_val, best_val;
  double tokens_per_s = 0;  // median over logged steps (0: none)
  int64_t params = 0;       // from the run's train.out ("model: N parameters"); 0: unknown
  std::string state;        // per mixer kind, the decoder state at train.seq_len (state_slots)
  std::optional<double> recall_accuracy;  // <run>/eval/recall.json, when evaluated
};
Result summarize(const std::string& run_dir, const config::Config& cfg);

// The state one layer of each mixer kind holds after train.seq_len tokens: KVM slots by the
// budget schedule (kernels::kvm_budget over the state updates of one training sequence), swa its
// window, attn every token. "kvm 121 / swa 64".
std::string state_slots(const config::ModelConfig& m, int T);

// Trains every run not yet done; returns the exit status (0; 1 when a run failed; 130 when
// interrupted). Writes summary.{csv,md,json} and loss_curves.png into s.out.
int run(const Sweep& s, bool dry_run);

// Writes the summary files (and the plot) for the runs as they stand.
void write_summary(const Sweep& s, const std::vector<std::string>& failed);

}  // namespace sweep
