// RWKV-style token shift (model.token_shift): each channel mixes the current token with the
// previous one, out[b,t] = mix*inp[b,t] + (1-mix)*inp[b,t-1]; before t = 0 comes prev[b] (the
// decode cache) or zero (a sequence's start in training).
#include "kernels/kernels.h"

namespace kernels::cpu {

void token_shift_forward(float* out, const float* inp, const float* prev, const float* mix, int B, int T, int C) {
  // out, inp: (B,T,C); prev (B,C) or nullptr; mix (C). out must not alias inp.
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++) {
    for (int t = 0; t < T; t++) {
      const float* x = inp + ((size_t)b * T + t) * C;
      const float* xp = t > 0 ? x - C : (prev ? prev + (size_t)b * C : nullptr);
      float* o = out + ((size_t)b * T + t) * C;
      if (xp) {
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = mix[c] * x[c] + (1.0f - mix[c]) * xp[c];
      } else {
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = mix[c] * x[c];
      }
    }
  }
}

void token_shift_backward(float* dinp, float* dmix, const float* dout, const float* inp, const float* mix, int B,
                          int T, int C) {
  // dinp (B,T,C), dmix (C): accumulated; dout, inp (B,T,C); mix (C)
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++) {
    for (int t = 0; t < T; t++) {
      const float* d = dout + ((size_t)b * T + t) * C;
      float* di = dinp + ((size_t)b * T + t) * C;
#pragma omp simd
      for (int c = 0; c < C; c++) di[c] += mix[c] * d[c];
      if (t + 1 < T) {
#pragma omp simd
        for (int c = 0; c < C; c++) di[c] += (1.0f - mix[c]) * d[c + C];
      }
    }
  }
  // dmix = sum over rows of dout * (x_t - x_{t-1}): threads split the channels
  constexpr int kChunk = 64;
#pragma omp parallel for schedule(static)
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    int c1 = c0 + kChunk < C ? c0 + kChunk : C;
    for (int b = 0; b < B; b++) {
      for (int t = 0; t < T; t++) {
        const float* x = inp + ((size_t)b * T + t) * C;
        const float* d = dout + ((size_t)b * T + t) * C;
        for (int c = c0; c < c1; c++) dmix[c] += d[c] * (x[c] - (t > 0 ? x[c - C] : 0.0f));
      }
    }
  }
}

}  // namespace kernels::cpu
