// Placeholder until data/prepare lands (owned by the data work).
#include "trainer/cli.h"
#include "trainer/commands.h"
int cmd_prepare(int argc, char** argv) {
  cli::Args args("prepare", "tokenize text into HDF5 token shards");
  args.parse(argc, argv, 2);
  throw cli::UsageError("prepare: not built yet");
}
