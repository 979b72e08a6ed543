#include <cstdio>

#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/config/config.h"
#include "trainer/train/trainer.h"

int cmd_train(int argc, char** argv) {
  cli::Args args("train", "Train a model from a YAML config. The resolved config is printed and saved to "
                          "<log.dir>/config.yaml; the log is <log.dir>/log.jsonl.");
  args.positional("CONFIG", "YAML config (may name a `base:` to inherit from)", false);
  args.repeated("set", "KEY=VALUE", "override a config key; VALUE is parsed as YAML");
  args.option("resume", "auto|PATH",
              "continue a run exactly: auto = the newest complete checkpoint in <log.dir>/checkpoints (a fresh "
              "start when there is none), PATH = a checkpoint or run directory");
  args.flag("overwrite", "a fresh run into a log.dir that holds a run: remove that run (log.jsonl, config.yaml, "
                        "run.json, checkpoints/) first; without it such a run is refused");
  args.flag("rederive-data-position", "with --resume: accept another train.seq_len, global batch or data.train "
                                     "than the checkpoint's, continuing the data at as many tokens consumed (not an "
                                     "exact continuation); without it such a resume is refused");
  args.flag("print-config", "print the resolved config and exit");
  args.flag("config-keys", "print every config key (type, default, meaning) as a Markdown table and exit");
  args.parse(argc, argv, 2);
  if (args.has("config-keys")) {
    std::fputs(config::reference_markdown().c_str(), stdout);
    return 0;
  }
  if (!args.has("CONFIG")) throw UsageError("train: missing CONFIG (see kvmtrain train --help)");
  config::Config cfg = config::load(args.str("CONFIG"), args.list("set"));
  if (args.has("print-config")) {
    std::fputs(config::to_yaml(cfg).c_str(), stdout);
    return 0;
  }
  if (args.has("resume") && args.has("overwrite"))
    throw UsageError("train: --resume continues the run in log.dir and --overwrite removes it: give one of them");
  if (args.has("rederive-data-position") && !args.has("resume"))
    throw UsageError("train: --rederive-data-position applies to a resume (add --resume auto|PATH)");
  RunStart start;
  start.resume = args.has("resume") ? args.str("resume") : "";
  start.overwrite = args.has("overwrite");
  start.rederive_data_position = args.has("rederive-data-position");
  return run_training(cfg, start);
}
