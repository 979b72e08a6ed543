#pragma once
// The training loop: data -> forward -> loss -> backward -> clip -> AdamW -> log, with validation
// every train.eval_every steps and a sample at the end.
#include "config/config.h"

// Runs the whole training described by `cfg`; returns the process exit status. `resume`: "" (a
// fresh run), "auto" (the newest complete checkpoint in <log.dir>/checkpoints, fresh when none)
// or a checkpoint or run directory.
#include <string>
int run_training(const config::Config& cfg, const std::string& resume = "");
