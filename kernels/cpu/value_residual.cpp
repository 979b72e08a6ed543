// The paper's value residual: v moves towards the anchor (layer 0's v) by a gate, a learned scalar
// (linear) or sigmoid(w[c] + z[n,c]) per token and channel (rwkv). Rows of v, out, dv and dout
// lie at their own strides (the v columns of qkv rows); anchor, z and their gradients are dense.
#include <vector>

#include "kernels/cpu/vecmath.h"
#include "kernels/kernels.h"

namespace kernels::cpu {

namespace {

inline float gate_of(const float* w, const float* z, size_t i, int c, ValueResidualMode mode) {
  return mode == ValueResidualMode::linear ? w[0] : 1.0f / (1.0f + vexp(-(w[c] + z[i])));
}

}  // namespace

void value_residual_forward(float* out, int ld_out, const float* v, int ld_v, const float* anchor, const float* z,
                            const float* w, int N, int C, ValueResidualMode mode) {
  // out (N rows of ld_out), v (N rows of ld_v), anchor (N,C); z (N,C), w (C) rwkv; w (1) linear
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float* vn = v + (size_t)n * ld_v;
    float* o = out + (size_t)n * ld_out;
    const size_t row = (size_t)n * C;
#pragma omp simd
    for (int c = 0; c < C; c++) {
      const float g = gate_of(w, z, row + c, c, mode);
      o[c] = vn[c] + (anchor[row + c] - vn[c]) * g;
    }
  }
}

void value_residual_backward(float* dv, int ld_dv, float* danchor, float* dz, float* dw, const float* dout,
                             int ld_dout, const float* v, int ld_v, const float* anchor, const float* z,
                             const float* w, int N, int C, ValueResidualMode mode) {
  // dv (N rows of ld_dv), dz (N,C) rwkv: written; danchor (N,C), dw (C) rwkv or (1) linear:
  // accumulated; dout (N rows of ld_dout), v (N rows of ld_v), anchor (N,C); z (N,C) rwkv
  const bool linear = mode == ValueResidualMode::linear;
  std::vector<double> row_sums(linear ? N : 0);  // linear: each row's sum of dgate, added in order below
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float* d = dout + (size_t)n * ld_dout;
    const float* vn = v + (size_t)n * ld_v;
    float* dvn = dv + (size_t)n * ld_dv;
    const size_t row = (size_t)n * C;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; c++) {
      const float g = gate_of(w, z, row + c, c, mode);
      const float dgate = d[c] * (anchor[row + c] - vn[c]);
      dvn[c] = d[c] * (1.0f - g);
      danchor[row + c] += d[c] * g;
      if (linear) sum += dgate;
      else dz[row + c] = dgate * g * (1.0f - g);
    }
    if (linear) row_sums[n] = sum;
  }
  if (linear) {
    double sum = 0.0;
    for (double s : row_sums) sum += s;
    dw[0] += (float)sum;
    return;
  }
  // dw[c] = the column sums of dz: threads split the channels
  constexpr int kChunk = 64;
#pragma omp parallel for schedule(static)
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    int c1 = c0 + kChunk < C ? c0 + kChunk : C;
    for (int n = 0; n < N; n++)
      for (int c = c0; c < c1; c++) dw[c] += dz[(size_t)n * C + c];
  }
}

}  // namespace kernels::cpu
