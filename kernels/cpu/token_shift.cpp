// Token shift: each channel mixes the current token with the previous one by a weight w, in the
// forms of kernels.h (mix_zero: RWKV-4's model.token_shift; delta_zero, delta_first: the paper's
// shifts). Before t = 0 comes prev[b] (the decode cache), else zero, or x_0 itself for delta_first.
#include "kernels/kernels.h"

namespace kernels::cpu {

void token_shift_forward(float* out, const float* inp, const float* prev, const float* w, int B, int T, int C,
                         TokenShiftForm form) {
  // out, inp: (B,T,C); prev (B,C) or nullptr; w (C). out must not alias inp.
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++) {
    for (int t = 0; t < T; t++) {
      const float* x = inp + ((size_t)b * T + t) * C;
      const float* xp = t > 0 ? x - C : prev ? prev + (size_t)b * C : form == TokenShiftForm::delta_first ? x : nullptr;
      float* o = out + ((size_t)b * T + t) * C;
      if (form == TokenShiftForm::mix_zero && xp) {
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = w[c] * x[c] + (1.0f - w[c]) * xp[c];
      } else if (form == TokenShiftForm::mix_zero) {
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = w[c] * x[c];
      } else if (xp) {
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = x[c] + w[c] * (xp[c] - x[c]);
      } else {
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = x[c] - w[c] * x[c];  // x + w*(0 - x)
      }
    }
  }
}

void token_shift_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w, int B, int T,
                          int C, TokenShiftForm form) {
  // dinp (B,T,C), dw (C): accumulated; dout, inp (B,T,C); w (C)
  const bool mix = form == TokenShiftForm::mix_zero;
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++) {
    for (int t = 0; t < T; t++) {
      const float* d = dout + ((size_t)b * T + t) * C;
      float* di = dinp + ((size_t)b * T + t) * C;
      // x_t's weight in out_t, then in out_{t+1}: w and 1-w (mix), 1-w and w (delta); delta_first's
      // out_0 is x_0 itself
      if (mix) {
#pragma omp simd
        for (int c = 0; c < C; c++) di[c] += w[c] * d[c];
      } else if (t == 0 && form == TokenShiftForm::delta_first) {
#pragma omp simd
        for (int c = 0; c < C; c++) di[c] += d[c];
      } else {
#pragma omp simd
        for (int c = 0; c < C; c++) di[c] += (1.0f - w[c]) * d[c];
      }
      if (t + 1 < T && mix) {
#pragma omp simd
        for (int c = 0; c < C; c++) di[c] += (1.0f - w[c]) * d[c + C];
      } else if (t + 1 < T) {
#pragma omp simd
        for (int c = 0; c < C; c++) di[c] += w[c] * d[c + C];
      }
    }
  }
  // dw = sum over rows of dout * (x_t - x_{t-1}) (mix) or dout * (x_{t-1} - x_t) (delta): threads
  // split the channels. delta_first's row t = 0 adds nothing (x_{-1} = x_0).
  constexpr int kChunk = 64;
  const int t0 = form == TokenShiftForm::delta_first ? 1 : 0;
#pragma omp parallel for schedule(static)
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    int c1 = c0 + kChunk < C ? c0 + kChunk : C;
    for (int b = 0; b < B; b++) {
      for (int t = t0; t < T; t++) {
        const float* x = inp + ((size_t)b * T + t) * C;
        const float* d = dout + ((size_t)b * T + t) * C;
        if (mix)
          for (int c = c0; c < c1; c++) dw[c] += d[c] * (x[c] - (t > 0 ? x[c - C] : 0.0f));
        else
          for (int c = c0; c < c1; c++) dw[c] += d[c] * ((t > 0 ? x[c - C] : 0.0f) - x[c]);
      }
    }
  }
}

}  // namespace kernels::cpu
