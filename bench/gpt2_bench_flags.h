#pragma once
// The flags the GPT-2 training benches share (train_bench, dp_bench): --config FILE, --B, --T,
// --steps, --out FILE. parse_args reads the command line: the bench's own flags, then these.
#include <cstdio>
#include <cstdlib>
#include <string>

struct Gpt2BenchFlags {
  std::string config_path = std::string(KVMTRAIN_SOURCE_DIR) + "/configs/gpt2-124m.yaml";
  std::string out;
  int B = 4, T = 64, steps;

  // Reads argv as --flag value pairs, each through own(flag, value) (false: not the bench's own),
  // then the shared flags. Returns -1 to go on, or the exit code once it has printed `usage`: 0
  // after --help, 2 after an unknown flag or a flag without its value (rather than running a
  // minutes-long bench the caller did not ask for).
  template <class Own>
  int parse_args(int argc, char** argv, const char* prog, const char* usage, Own own) {
    for (int i = 1; i < argc; i += 2) {
      const std::string a = argv[i];
      if (a == "--help" || a == "-h") return std::printf("%s", usage), 0;
      if (i + 1 == argc) return std::fprintf(stderr, "%s: flag %s needs a value\n%s", prog, a.c_str(), usage), 2;
      if (!own(a, argv[i + 1]) && !parse(a, argv[i + 1]))
        return std::fprintf(stderr, "%s: unknown flag %s\n%s", prog, a.c_str(), usage), 2;
    }
    return -1;
  }

 private:
  // Takes flag a with value v if it is one of the shared flags; false otherwise.
  bool parse(const std::string& a, const char* v) {
    if (a == "--config") config_path = v;
    else if (a == "--B") B = std::atoi(v);
    else if (a == "--T") T = std::atoi(v);
    else if (a == "--steps") steps = std::atoi(v);
    else if (a == "--out") out = v;
    else return false;
    return true;
  }
};
