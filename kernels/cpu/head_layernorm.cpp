// qk-norm: LayerNorm over each head's hs dims of q (or k) in place in the qkv rows, eps 1e-5,
// biased variance, one weight/bias of hs shared by all heads.
#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"

namespace kernels::cpu {

void head_layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                            const float* bias, int N, int NH, int hs, int ld) {
  // row n, head h at inp + n*ld + h*hs (out likewise); mean, rstd (N*NH); weight, bias (hs)
#pragma omp parallel for collapse(2) schedule(static)
  for (int n = 0; n < N; n++) {
    for (int h = 0; h < NH; h++) {
      const float* x = inp + (size_t)n * ld + (size_t)h * hs;
      float* o = out + (size_t)n * ld + (size_t)h * hs;
      float sum = 0.0f;
      for (int c = 0; c < hs; c++) sum += x[c];
      float m = sum / hs;
      float sq = 0.0f;
      for (int c = 0; c < hs; c++) sq += (x[c] - m) * (x[c] - m);
      float s = 1.0f / std::sqrt(sq / hs + 1e-5f);
      for (int c = 0; c < hs; c++) o[c] = (x[c] - m) * s * weight[c] + bias[c];
      mean[(size_t)n * NH + h] = m;
      rstd[(size_t)n * NH + h] = s;
    }
  }
}

void head_layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                             const float* weight, const float* mean, const float* rstd, int N, int NH, int hs,
                             int ld) {
  // dinp, dweight, dbias accumulated; layouts as the forward
#pragma omp parallel for collapse(2) schedule(static)
  for (int n = 0; n < N; n++) {
    for (int h = 0; h < NH; h++) {
      size_t off = (size_t)n * ld + (size_t)h * hs;
      const float *x = inp + off, *d = dout + off;
      float* di = dinp + off;
      float m = mean[(size_t)n * NH + h], s = rstd[(size_t)n * NH + h];
      float dm = 0.0f, dnm = 0.0f;
      for (int c = 0; c < hs; c++) {
        float dnorm = d[c] * weight[c];
        dm += dnorm;
        dnm += dnorm * (x[c] - m) * s;
      }
      dm /= hs;
      dnm /= hs;
      for (int c = 0; c < hs; c++) di[c] += (d[c] * weight[c] - dm - (x[c] - m) * s * dnm) * s;
    }
  }
  // weight and bias gradients sum over every (row, head): serial over rows, no races
  for (int n = 0; n < N; n++) {
    for (int h = 0; h < NH; h++) {
      size_t off = (size_t)n * ld + (size_t)h * hs;
      const float *x = inp + off, *d = dout + off;
      float m = mean[(size_t)n * NH + h], s = rstd[(size_t)n * NH + h];
      for (int c = 0; c < hs; c++) {
        dweight[c] += d[c] * (x[c] - m) * s;
        dbias[c] += d[c];
      }
    }
  }
}

}  // namespace kernels::cpu
