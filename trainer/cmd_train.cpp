// Placeholder until the training loop lands.
#include "trainer/cli.h"
#include "trainer/commands.h"
int cmd_train(int argc, char** argv) {
  cli::Args args("train", "train a model from a YAML config");
  args.parse(argc, argv, 2);
  throw cli::UsageError("train: not built yet");
}
