// Token embedding plus (optionally) learned position embedding, over a vocabulary shard: wte holds
// rows [v0, v0+Vl) (the whole vocabulary without tensor parallelism).
#include <algorithm>

#include "kernels/kernels.h"

namespace kernels::cpu {

void encoder_forward(float* out, const int* inp, const float* wte, const float* wpe, int B, int T, int C, int v0,
                     int Vl) {
  // out (B,T,C), inp (B,T), wte (Vl,C), wpe (maxT,C) or nullptr
#pragma omp parallel for schedule(static)
  for (int bt = 0; bt < B * T; bt++) {
    float* o = out + (size_t)bt * C;
    const int row = inp[bt] - v0;
    if (row < 0 || row >= Vl) {  // another shard's token: its owner adds the position too
      std::fill(o, o + C, 0.0f);
      continue;
    }
    const float* e = wte + (size_t)row * C;
    if (wpe) {
      const float* p = wpe + (size_t)(bt % T) * C;
#pragma omp simd
      for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
    } else {
      std::copy(e, e + C, o);
    }
  }
}

void encoder_backward(float* dwte, float* dwpe, const float* dout, const int* inp, int B, int T, int C, int v0,
                      int Vl) {
  // dwte (Vl,C) and dwpe (maxT,C) or nullptr, accumulated; dout (B,T,C), inp (B,T)
  // A token can repeat within the batch, so rows of dwte would race: threads split the channels
  // instead, each walking every position over its own slice.
  constexpr int kChunk = 64;
#pragma omp parallel for schedule(static)
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    int c1 = std::min(C, c0 + kChunk);
    for (int bt = 0; bt < B * T; bt++) {
      const float* d = dout + (size_t)bt * C;
      const int row = inp[bt] - v0;
      if (row >= 0 && row < Vl) {  // the shard's own tokens; the positions take every token
        float* w = dwte + (size_t)row * C;
#pragma omp simd
        for (int c = c0; c < c1; c++) w[c] += d[c];
      }
      if (dwpe) {
        float* p = dwpe + (size_t)(bt % T) * C;
#pragma omp simd
        for (int c = c0; c < c1; c++) p[c] += d[c];
      }
    }
  }
}

}  // namespace kernels::cpu
