#pragma once
// The training loop: data -> forward -> loss -> backward -> gradient average -> clip -> AdamW ->
// log, with validation every train.eval_every steps, checkpoints every checkpoint.every steps and
// a sample at the end. One Trainer is one run, in phases:
//   the constructor  the rank mesh, the run files, the loaders, the model and its data-parallel
//                    optimizer, and with --resume the state of all of them
//   step()           one optimizer step
//   evaluate()       the validation loss (trainer/train/evaluate.h, the code `kvmtrain eval` runs)
//   log()            the log.jsonl row and the progress line
//   save()           a checkpoint, best.json, pruning
//   run()            the loop over them, stopped by train.steps, a signal or divergence
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/dir_lock.h"
#include "trainer/config/config.h"
#include "data/batch.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "trainer/model/model.h"
#include "trainer/parallel/data_parallel.h"
#include "trainer/parallel/mesh.h"
#include "trainer/train/evaluate.h"
#include "trainer/train/run_log.h"

// How a run starts (train's flags).
struct RunStart {
  // "" (a fresh run), "auto" (the newest complete checkpoint in <log.dir>/checkpoints, fresh when
  // none) or a checkpoint or run directory
  std::string resume;
  // a fresh run into a log.dir that holds a run removes that run first (its log, config,
  // checkpoints); without it such a run is refused (continue it with resume "auto")
  bool overwrite = false;
  // a resume accepts another train.seq_len, global batch or data.train, re-deriving the data
  // position from the tokens consumed; without it they are refused
  bool rederive_data_position = false;
};

class Trainer {
 public:
  // Sets up the run `cfg` describes.
  Trainer(const config::Config& cfg, const RunStart& start);
  // Trains up to train.steps; returns the process exit status: 0, or 130 after Ctrl-C. SIGTERM and
  // SIGUSR1 save a checkpoint and stop with 0; divergence throws.
  int run();

 private:
  // What one optimizer step measured.
  struct StepStats {
    float loss;       // mean over the scored targets of every micro-batch and data-parallel rank (0: none)
    int64_t scored;   // those targets
    float grad_norm;  // before clipping
    float lr;
    bool finite;      // false: the update was skipped
    double seconds;
  };

  void set_up_mesh();
  void claim_run_dir(const std::string& resume, bool overwrite);
  void record_run();
  void set_up_data();
  void set_up_model();
  std::string checkpoint_to_resume(const std::string& resume);
  void restore(const RunStart& start);
  void measure();
  void measure_peak(double seconds);  // raises peak_ to a fresh GEMM measurement

  StepStats step();
  float evaluate();
  void log(const StepStats& stats, std::optional<float> val_loss);
  std::string save(int64_t steps_done, std::optional<double> val_loss);
  int finish();
  int stop_for_log(int step);
  void sample();

  const config::Config cfg_;
  const std::string resolved_;   // the resolved config as YAML
  const std::string ckpt_root_;  // <log.dir>/checkpoints
  const Backend* backend_ = nullptr;
  std::unique_ptr<Mesh> mesh_;
  bool leader_ = false;  // world rank 0: prints, writes the log, the run files and checkpoints
  std::unique_ptr<data::Loader> train_;
  std::unique_ptr<eval::Validation> val_;  // null without data.val
  std::unique_ptr<data::Tokenizer> tokenizer_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<DataParallel> dp_;  // ZeRO-1 AdamW over the data group
  std::unique_ptr<RunLog> log_;       // rank 0's
  bool tty_ = false;                  // stdout is a terminal: the progress line redraws in place
  std::vector<data::Batch> micro_;  // one step's micro-batches, all loaded before the first forward

  // the loop's state; a checkpoint holds it (LoopState)
  int step_ = 0;  // optimizer steps done
  uint64_t sample_rng_ = 0;
  int bad_in_a_row_ = 0;
  double total_time_ = 0;
  // a failed log write (rank 0's): the error, the rows not appended since, and whether any rank's
  // log failed (agreed after every step, as the signals are)
  std::string log_error_;
  json::Array unlogged_;
  bool log_failed_ = false;

  // MFU's yardstick, FLOP/s: the highest GEMM rate seen (issue 21: one start-up measurement in a
  // slow moment gave "mfu 152%"): measured at start-up, again every kPeakEvery seconds of
  // training, and raised to any step's own rate above it, so MFU never exceeds 100%
  static constexpr double kPeakEvery = 60;  // seconds of training between peak measurements
  static constexpr int kWarmupSteps = 3;
  double peak_ = 0;
  double peak_measured_at_ = 0;  // total_time_ of the last measurement
  // the first steps of a process (page faults, kernel JIT, caches) are marked warm-up in the log
  // and the ETA counts the steady steps after them
  int steps_this_process_ = 0;
  double steady_seconds_ = 0;
  int steady_steps_ = 0;
  double flops_per_step_ = 0;  // forward and backward, all micro-steps
  double unigram_nats_ = 0;
  float last_val_ = NAN;
  int64_t saved_step_ = -1;  // the step of the last checkpoint this run saved
  int64_t resumed_step_ = -1;  // the step of the checkpoint this run resumed from; -1: none
  std::unique_ptr<DirLock> run_lock_;  // rank 0: log.dir is this run's until it ends
};

// SIGINT (stop after the current step, exit 130; a second leaves at once), SIGTERM and SIGUSR1
// (stop after the current step, save a checkpoint, exit 0): installed before anything slow, so a
// signal during set-up stops the run at step 0 with the initial weights saved.
void install_stop_signals();

// Runs the whole training `cfg` describes (a Trainer, after install_stop_signals); returns the
// process exit status.
int run_training(const config::Config& cfg, const RunStart& start = {});
