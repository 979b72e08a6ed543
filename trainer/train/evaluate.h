#pragma once
// Evaluation, shared by the training loop, `kvmtrain eval` and `kvmtrain sweep`: the validation
// loss (one code path, so that `kvmtrain eval --task loss` of a checkpoint over train.eval_steps
// batches is the val_loss its run logged), plotting through launch/plot.py (matplotlib,
// python3-matplotlib from Debian) and where an evaluation writes its files.
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config/config.h"
#include "data/batch.h"
#include "data/loader.h"
#include "trainer/model/model.h"

namespace eval {

// The validation windows of `sources` in batches of B x T: in order from the first window, and
// the same on every rank (not shuffled, not split over ranks).
class Validation {
 public:
  Validation(const config::Config& cfg, std::vector<data::Source> sources, int B, int T);
  // The mean next-token loss of `model` over the scored targets of the first `batches` batches
  // (every target without loss masks; 0 when none is scored): the same windows on every call, so
  // that values are comparable.
  double loss(Model& model, int64_t batches);
  uint64_t windows_per_epoch() const { return loader_.windows_per_epoch(); }

 private:
  data::Loader loader_;
  data::Batch batch_;
};

// Runs `$KVMTRAIN_PYTHON (default /usr/bin/python3) $KVMTRAIN_PLOT (default
// <source>/launch/plot.py) args...`; a missing python or matplotlib is a warning, never an error.
// Returns whether the plot was written.
bool plot(const std::vector<std::string>& args);

// The directory an evaluation of CKPT_OR_RUN writes into by default: <run>/eval for a run
// directory or a checkpoint inside one (<run>/checkpoints/step_N), else CKPT/../eval.
std::string default_out_dir(const std::string& ckpt_or_run, const std::string& resolved_checkpoint);

}  // namespace eval
