#pragma once
// Naive double-precision references of the kernels, one loop per formula: the CPU kernel tests
// (test_kernels.cpp, test_backbone_kernels.cpp) and the backend table (test_backend_ops.cpp)
// check the kernels against them, forward outputs directly and gradients by central differences.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/kernels.h"

namespace test_util {

using DVec = std::vector<double>;

// wte: the vocabulary rows [v0, v0+Vl); another shard's token gives a zero row
inline DVec ref_encoder(const std::vector<int>& inp, const DVec& wte, const DVec* wpe, int B, int T, int C, int v0,
                        int Vl) {
  DVec out((size_t)B * T * C, 0.0);
  for (int bt = 0; bt < B * T; bt++) {
    const int row = inp[bt] - v0;
    if (row < 0 || row >= Vl) continue;
    for (int c = 0; c < C; c++)
      out[(size_t)bt * C + c] = wte[(size_t)row * C + c] + (wpe ? (*wpe)[(size_t)(bt % T) * C + c] : 0.0);
  }
  return out;
}

inline DVec ref_layernorm(const DVec& inp, const DVec& w, const DVec& b, int N, int C, DVec* mean = nullptr,
                   DVec* rstd = nullptr) {
  DVec out((size_t)N * C);
  for (int i = 0; i < N; i++) {
    const double* x = &inp[(size_t)i * C];
    double m = 0.0, var = 0.0;
    for (int c = 0; c < C; c++) m += x[c] / C;
    for (int c = 0; c < C; c++) var += (x[c] - m) * (x[c] - m) / C;
    double s = 1.0 / std::sqrt(var + 1e-5);
    for (int c = 0; c < C; c++) out[(size_t)i * C + c] = (x[c] - m) * s * w[c] + b[c];
    if (mean) (*mean)[i] = m, (*rstd)[i] = s;
  }
  return out;
}

inline DVec ref_matmul(const DVec& inp, const DVec& w, const DVec* bias, int N, int IC, int OC) {
  DVec out((size_t)N * OC);
  for (int i = 0; i < N; i++)
    for (int o = 0; o < OC; o++) {
      double s = bias ? (*bias)[o] : 0.0;
      for (int k = 0; k < IC; k++) s += inp[(size_t)i * IC + k] * w[(size_t)o * IC + k];
      out[(size_t)i * OC + o] = s;
    }
  return out;
}

// The plain T x T softmax: every score of a row, then its softmax, then the weighted sum of values.
// Query t sees key s <= t within the window: the last `window` positions (block 0), or the chunks of
// `block` positions from window/block - 1 before t's own up to it (block sliding window).
inline bool ref_attention_visible(int t, int s, int window, int block) {
  if (s > t) return false;
  if (window == 0) return true;
  return block == 0 ? s > t - window : s / block > t / block - window / block;
}

inline DVec ref_attention(const DVec& qkv, int B, int T, int C, int NH, int window, int block, DVec* lse = nullptr) {
  int hs = C / NH;
  double scale = 1.0 / std::sqrt((double)hs);
  DVec out((size_t)B * T * C, 0.0), att(T);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++)
      for (int t = 0; t < T; t++) {
        const double* q = &qkv[((size_t)b * T + t) * 3 * C + h * hs];
        double mx = -INFINITY;
        for (int s = 0; s < T; s++) {
          att[s] = -INFINITY;
          if (!ref_attention_visible(t, s, window, block)) continue;
          const double* k = &qkv[((size_t)b * T + s) * 3 * C + C + h * hs];
          double dotqk = 0.0;
          for (int d = 0; d < hs; d++) dotqk += q[d] * k[d];
          att[s] = dotqk * scale;
          mx = std::max(mx, att[s]);
        }
        double sum = 0.0;
        for (int s = 0; s < T; s++) sum += std::exp(att[s] - mx);
        double* o = &out[((size_t)b * T + t) * C + h * hs];
        for (int s = 0; s < T; s++) {
          double p = std::exp(att[s] - mx) / sum;
          const double* v = &qkv[((size_t)b * T + s) * 3 * C + 2 * C + h * hs];
          for (int d = 0; d < hs; d++) o[d] += p * v[d];
        }
        if (lse) (*lse)[((size_t)b * NH + h) * T + t] = mx + std::log(sum);
      }
  return out;
}

inline double ref_gelu(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

inline DVec ref_crossentropy(const DVec& logits, const std::vector<int>& targets, int N, int V, int Vp, int ignore) {
  DVec losses(N, 0.0);
  for (int i = 0; i < N; i++) {
    if (targets[i] == ignore) continue;
    const double* row = &logits[(size_t)i * Vp];
    double mx = *std::max_element(row, row + V), sum = 0.0;
    for (int c = 0; c < V; c++) sum += std::exp(row[c] - mx);
    losses[i] = mx + std::log(sum) - row[targets[i]];
  }
  return losses;
}

// paper: the paper's RoPE, frequencies (1/base)^linspace(0, 1, R/2) and the rotation the other way
inline DVec ref_rope(const DVec& x, int B, int T, int NH, int hs, int ld, int R, double base, int pos0,
                     bool paper = false) {
  DVec out = x;
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      for (int h = 0; h < NH; h++)
        for (int i = 0; i < R / 2; i++) {
          size_t o = ((size_t)b * T + t) * ld + (size_t)h * hs + 2 * i;
          if (paper) {
            double a = (pos0 + t) * std::pow(1.0 / base, R == 2 ? 0.0 : i / (R / 2 - 1.0));
            out[o] = x[o] * std::cos(a) + x[o + 1] * std::sin(a);
            out[o + 1] = x[o + 1] * std::cos(a) - x[o] * std::sin(a);
            continue;
          }
          double a = (pos0 + t) * std::pow(base, -2.0 * i / R);
          out[o] = x[o] * std::cos(a) - x[o + 1] * std::sin(a);
          out[o + 1] = x[o] * std::sin(a) + x[o + 1] * std::cos(a);
        }
  return out;
}

inline DVec ref_head_ln(const DVec& x, const DVec& w, const DVec& bias, int N, int NH, int hs, int ld) {
  DVec out = x;
  for (int n = 0; n < N; n++)
    for (int h = 0; h < NH; h++) {
      size_t o = (size_t)n * ld + (size_t)h * hs;
      double m = 0, v = 0;
      for (int c = 0; c < hs; c++) m += x[o + c];
      m /= hs;
      for (int c = 0; c < hs; c++) v += (x[o + c] - m) * (x[o + c] - m);
      v /= hs;
      for (int c = 0; c < hs; c++) out[o + c] = (x[o + c] - m) / std::sqrt(v + 1e-5) * w[c] + bias[c];
    }
  return out;
}

// x_{-1} = prev[b], else 0, or x_0 for delta_first; mix_zero w x_t + (1-w) x_{t-1}, the delta
// forms x_t + w (x_{t-1} - x_t)
inline DVec ref_shift(const DVec& x, const DVec* prev, const DVec& w, int B, int T, int C,
                      kernels::TokenShiftForm form) {
  DVec out(x.size());
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      for (int c = 0; c < C; c++) {
        size_t o = ((size_t)b * T + t) * C + c;
        double p = t > 0                                        ? x[o - C]
                   : prev                                       ? (*prev)[(size_t)b * C + c]
                   : form == kernels::TokenShiftForm::delta_first ? x[o]
                                                                  : 0.0;
        out[o] = form == kernels::TokenShiftForm::mix_zero ? w[c] * x[o] + (1 - w[c]) * p : x[o] + w[c] * (p - x[o]);
      }
  return out;
}

// v + (anchor - v) gate, gate w[0] (linear) or sigmoid(w[c] + z[n,c]) (rwkv); v's row n from
// v_off + n*ld_v; the result dense (N,C)
inline DVec ref_value_residual(const DVec& v, size_t v_off, int ld_v, const DVec& anchor, const DVec* z, const DVec& w,
                               int N, int C, kernels::ValueResidualMode mode) {
  DVec out((size_t)N * C);
  for (int n = 0; n < N; n++)
    for (int c = 0; c < C; c++) {
      size_t i = (size_t)n * C + c;
      double vi = v[v_off + (size_t)n * ld_v + c];
      double g = mode == kernels::ValueResidualMode::linear ? w[0] : 1.0 / (1.0 + std::exp(-(w[c] + (*z)[i])));
      out[i] = vi + (anchor[i] - vi) * g;
    }
  return out;
}

}  // namespace test_util
