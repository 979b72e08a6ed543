#pragma once
// --device for the commands that load a model (generate, eval, forward): where it runs, cpu or
// cuda, by default the run's own train.device.
#include "trainer/cli/args.h"
#include "trainer/config/config.h"
#include "kernels/backend.h"

void add_device_option(cli::Args& args);
// The backend --device names (or cfg.train.device). Throws UsageError on an unknown device, and
// std::runtime_error with one line when cuda is asked for where it cannot run.
const Backend& device_backend(const cli::Args& args, const config::Config& cfg);
