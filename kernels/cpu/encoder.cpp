// Token embedding plus (optionally) learned position embedding.
#include <algorithm>

#include "kernels/kernels.h"

namespace kernels::cpu {

void encoder_forward(float* out, const int* inp, const float* wte, const float* wpe, int B, int T, int C) {
  // out (B,T,C), inp (B,T), wte (Vp,C), wpe (maxT,C) or nullptr
#pragma omp parallel for schedule(static)
  for (int bt = 0; bt < B * T; bt++) {
    float* o = out + (size_t)bt * C;
    const float* e = wte + (size_t)inp[bt] * C;
    if (wpe) {
      const float* p = wpe + (size_t)(bt % T) * C;
#pragma omp simd
      for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
    } else {
      std::copy(e, e + C, o);
    }
  }
}

void encoder_backward(float* dwte, float* dwpe, const float* dout, const int* inp, int B, int T, int C) {
  // dwte (Vp,C) and dwpe (maxT,C) or nullptr, accumulated; dout (B,T,C), inp (B,T)
  // A token can repeat within the batch, so rows of dwte would race: threads split the channels
  // instead, each walking every position over its own slice.
  constexpr int kChunk = 64;
#pragma omp parallel for schedule(static)
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    int c1 = std::min(C, c0 + kChunk);
    for (int bt = 0; bt < B * T; bt++) {
      const float* d = dout + (size_t)bt * C;
      float* w = dwte + (size_t)inp[bt] * C;
      float* p = dwpe ? dwpe + (size_t)(bt % T) * C : nullptr;
#pragma omp simd
      for (int c = c0; c < c1; c++) w[c] += d[c];
      if (p) {
#pragma omp simd
        for (int c = c0; c < c1; c++) p[c] += d[c];
      }
    }
  }
}

}  // namespace kernels::cpu
