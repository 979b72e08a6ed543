#pragma once
// A batch as the model takes it: the loader's (B, T+1) windows split into inputs (B, T) and
// next-token targets (B, T), a target being -1 (the loss kernels' ignore_index) where the
// window's loss mask says it is not scored. The training step and the validation loss read their
// batches through it.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "data/loader.h"

namespace data {

struct Batch {
  int B, T;
  std::vector<int32_t> windows;
  std::vector<uint8_t> mask;  // (B, T+1): whether each window token is a scored target; empty: all are
  std::vector<int> inputs, targets;
  int64_t scored = 0;  // targets that are not -1
  Batch(int B_, int T_) : B(B_), T(T_), windows(size_t(B_) * (T_ + 1)), inputs(size_t(B_) * T_), targets(size_t(B_) * T_) {}
  void load(Loader& loader) {
    mask.resize(loader.masked() ? windows.size() : 0);
    loader.next(windows.data(), mask.empty() ? nullptr : mask.data());
    split();
  }
  // inputs, targets and scored from windows and mask.
  void split() {
    scored = 0;
    for (int b = 0; b < B; b++)
      for (int t = 0; t < T; t++) {
        const size_t w = size_t(b) * (T + 1) + t;
        const bool scores = mask.empty() || mask[w + 1];
        inputs[size_t(b) * T + t] = windows[w];
        targets[size_t(b) * T + t] = scores ? windows[w + 1] : -1;
        scored += scores;
      }
  }
};

}  // namespace data
