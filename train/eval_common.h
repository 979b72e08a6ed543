#pragma once
// Shared by `kvmtrain eval` and `kvmtrain sweep`: plotting through launch/plot.py (matplotlib,
// python3-matplotlib from Debian) and where an evaluation writes its files.
#include <string>
#include <vector>

namespace eval {

// Runs `$KVMTRAIN_PYTHON (default /usr/bin/python3) $KVMTRAIN_PLOT (default
// <source>/launch/plot.py) args...`; a missing python or matplotlib is a warning, never an error.
// Returns whether the plot was written.
bool plot(const std::vector<std::string>& args);

// The directory an evaluation of CKPT_OR_RUN writes into by default: <run>/eval for a run
// directory or a checkpoint inside one (<run>/checkpoints/step_N), else CKPT/../eval.
std::string default_out_dir(const std::string& ckpt_or_run, const std::string& resolved_checkpoint);

}  // namespace eval
