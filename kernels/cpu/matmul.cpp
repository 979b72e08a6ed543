// Fully connected layer, out = inp @ weight^T + bias, with weight stored (OC,IC) as PyTorch's
// nn.Linear. All the work is OpenBLAS sgemm.
#include <cblas.h>

#include <algorithm>

#include "kernels/kernels.h"

namespace kernels::cpu {

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IC, int OC) {
  // out (N,OC), inp (N,IC), weight (OC,IC), bias (OC) or nullptr
  // The bias rides on sgemm's beta: out starts as the bias broadcast and sgemm adds inp @ weight^T.
  if (bias) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) std::copy(bias, bias + OC, out + (size_t)i * OC);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp, IC, weight, IC,
              bias ? 1.0f : 0.0f, out, OC);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC) {
  // dinp (N,IC) or nullptr, dweight (OC,IC), dbias (OC) or nullptr: accumulated;
  // dout (N,OC), inp (N,IC), weight (OC,IC)
  if (dinp)  // dinp += dout @ weight
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f, dout, OC, weight, IC, 1.0f,
                dinp, IC);
  // dweight += dout^T @ inp
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
  if (dbias) {
    // column sums of dout; threads split the columns so none of them race
    constexpr int kChunk = 64;
#pragma omp parallel for schedule(static)
    for (int o0 = 0; o0 < OC; o0 += kChunk) {
      int o1 = std::min(OC, o0 + kChunk);
      for (int i = 0; i < N; i++) {
        const float* d = dout + (size_t)i * OC;
#pragma omp simd
        for (int o = o0; o < o1; o++) dbias[o] += d[o];
      }
    }
  }
}

}  // namespace kernels::cpu
