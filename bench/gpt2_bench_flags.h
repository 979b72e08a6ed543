#pragma once
// The flags the GPT-2 training benches share (train_bench, dp_bench): --config FILE, --B, --T,
// --steps, --out FILE. Each bench parses its own flags first and hands the rest here.
#include <cstdlib>
#include <string>

struct Gpt2BenchFlags {
  std::string config_path = std::string(KVMTRAIN_SOURCE_DIR) + "/configs/gpt2-124m.yaml";
  std::string out;
  int B = 4, T = 64, steps;

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
