// LayerNorm over the last dimension: out = (x - mean) * rstd * weight + bias, eps 1e-5, biased
// variance (as PyTorch). mean and rstd are saved so the backward need not recompute them.
#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"

namespace kernels::cpu {

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C) {
  // out, inp: (N,C); mean, rstd: (N); weight, bias: (C)
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; i++) {
    const float* x = inp + (size_t)i * C;
    float* o = out + (size_t)i * C;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; c++) sum += x[c];
    float m = sum / C;
    // two passes rather than E[x^2] - m^2, which cancels badly for rows far from zero mean
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int c = 0; c < C; c++) sq += (x[c] - m) * (x[c] - m);
    float s = 1.0f / std::sqrt(sq / C + 1e-5f);
#pragma omp simd
    for (int c = 0; c < C; c++) o[c] = (x[c] - m) * s * weight[c] + bias[c];
    mean[i] = m;
    rstd[i] = s;
  }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int N, int C) {
  // dinp (N,C), dweight, dbias (C): accumulated; dout, inp (N,C); weight (C); mean, rstd (N)
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; i++) {
    const float* x = inp + (size_t)i * C;
    const float* d = dout + (size_t)i * C;
    float* di = dinp + (size_t)i * C;
    float m = mean[i], s = rstd[i];
    // dnorm = d * weight; dinp = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
    float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
    for (int c = 0; c < C; c++) {
      float dnorm = d[c] * weight[c];
      dnorm_mean += dnorm;
      dnorm_norm_mean += dnorm * (x[c] - m) * s;
    }
    dnorm_mean /= C;
    dnorm_norm_mean /= C;
#pragma omp simd
    for (int c = 0; c < C; c++)
      di[c] += (d[c] * weight[c] - dnorm_mean - (x[c] - m) * s * dnorm_norm_mean) * s;
  }
  // dweight and dbias sum over all rows: threads split the channels so none of them race.
  constexpr int kChunk = 64;
#pragma omp parallel for schedule(static)
  for (int c0 = 0; c0 < C; c0 += kChunk) {
    int c1 = std::min(C, c0 + kChunk);
    for (int i = 0; i < N; i++) {
      const float* x = inp + (size_t)i * C;
      const float* d = dout + (size_t)i * C;
      float m = mean[i], s = rstd[i];
#pragma omp simd
      for (int c = c0; c < c1; c++) {
        dweight[c] += d[c] * (x[c] - m) * s;
        dbias[c] += d[c];
      }
    }
  }
}

}  // namespace kernels::cpu
