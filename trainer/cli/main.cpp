// kvmtrain: one binary, one subcommand per job. Each subcommand parses its own flags.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "common/usage_error.h"
#include "trainer/cli/commands.h"
#include "trainer/parallel/communicator.h"
#include "trainer/cli/runtime_env.h"
#include "version.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

const Command kCommands[] = {
    {"prepare", cmd_prepare, "tokenize text into HDF5 token shards (train/ and val/)"},
    {"train", cmd_train, "train a model from a YAML config"},
    {"export", cmd_export, "write a checkpoint as safetensors + config.json + tokenizer (Hugging Face)"},
    {"forward", cmd_forward, "logits and loss of token sequences under a checkpoint"},
    {"generate", cmd_generate, "stream text sampled from a checkpoint"},
    {"eval", cmd_eval, "validation loss, loss by position, passkey retrieval, recall accuracy of a checkpoint"},
    {"sweep", cmd_sweep, "train a grid or list of config overrides, resumable, with a summary table and plot"},
};

void print_usage(FILE* f) {
  std::fprintf(f, "kvmtrain %s: pretraining for transformers with Key-Value Means layers\n\n", KVMTRAIN_VERSION);
  std::fprintf(f, "usage: kvmtrain SUBCOMMAND [options]   (kvmtrain SUBCOMMAND --help for its flags)\n\n");
  for (const auto& c : kCommands) std::fprintf(f, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(f, "\n  --version  print the version and git commit\n  --help     show this help\n");
}

}  // namespace

int main(int argc, char** argv) {
  ensure_runtime_env(argv);
  if (argc < 2) {
    print_usage(stderr);
    return 2;
  }
  std::string sub = argv[1];
  if (sub == "--help" || sub == "-h" || sub == "help") {
    print_usage(stdout);
    return 0;
  }
  if (sub == "--version") {
    std::printf("kvmtrain %s (commit %s)\n", KVMTRAIN_VERSION, KVMTRAIN_GIT_COMMIT);
    return 0;
  }
  for (const auto& c : kCommands) {
    if (sub != c.name) continue;
    comm_init(&argc, &argv);
    int status;
    try {
      status = c.run(argc, argv);
    } catch (const std::exception& e) {
      std::fflush(stdout);
      std::fprintf(stderr, "kvmtrain: error: %s\n", e.what());
      // the other ranks may be waiting in a collective: stop them all rather than hang
      if (comm_is_distributed()) comm_abort(2);
      status = 2;
    }
    comm_finalize();
    return status;
  }
  std::fprintf(stderr, "kvmtrain: error: unknown subcommand '%s' (see kvmtrain --help)\n", sub.c_str());
  return 2;
}
