#pragma once
// A batch as the model takes it: the loader's (B, T+1) windows split into inputs (B, T) and
// next-token targets (B, T). The training step and the validation loss read their batches
// through it.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "data/loader.h"

namespace data {

struct Batch {
  int B, T;
  std::vector<int32_t> windows;
  std::vector<int> inputs, targets;
  Batch(int B_, int T_) : B(B_), T(T_), windows(size_t(B_) * (T_ + 1)), inputs(size_t(B_) * T_), targets(size_t(B_) * T_) {}
  void load(Loader& loader) {
    loader.next(windows.data());
    for (int b = 0; b < B; b++)
      for (int t = 0; t < T; t++) {
        inputs[size_t(b) * T + t] = windows[size_t(b) * (T + 1) + t];
        targets[size_t(b) * T + t] = windows[size_t(b) * (T + 1) + t + 1];
      }
  }
};

}  // namespace data
