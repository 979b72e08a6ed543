// Fully connected layer, out = inp @ weight^T + bias, with weight stored (OC,IC) as PyTorch's
// nn.Linear. The GEMMs are oneDNN's (kernels/onednn_gemm.h): fp32, or bf16 operands with fp32
// accumulation for mixed precision, where the activations and gradients are rounded to bf16 here
// (nearest even) and the weight arrives as the trainer's bf16 copy. The fused GELU variants are the
// GEMM then gelu_forward: the CUDA twin fuses them in cuBLASLt's epilogue.
#include <algorithm>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/onednn_gemm.h"

namespace kernels::cpu {

namespace {

using onednn::Operands;

void bias_backward(float* dbias, const float* dout, int N, int OC, bool accumulate) {
  // dbias (OC) += (or =) column sums of dout (N,OC); threads split the columns so none of them race
  constexpr int kChunk = 64;
#pragma omp parallel for schedule(static)
  for (int o0 = 0; o0 < OC; o0 += kChunk) {
    int o1 = std::min(OC, o0 + kChunk);
    if (!accumulate) std::fill(dbias + o0, dbias + o1, 0.0f);
    for (int i = 0; i < N; i++) {
      const float* d = dout + (size_t)i * OC;
#pragma omp simd
      for (int o = o0; o < o1; o++) dbias[o] += d[o];
    }
  }
}

// x (n) rounded to bf16 into a buffer of the calling thread that grows as needed; slot picks one
// of the two a backward needs at once.
const bf16* round_to_bf16(const float* x, size_t n, int slot) {
  thread_local std::vector<bf16> buf[2];
  std::vector<bf16>& b = buf[slot];
  if (b.size() < n) b.resize(n);
  bf16* out = b.data();
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) out[i] = bf16_round_nearest(x[i]);
  return out;
}

}  // namespace

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IC, int OC) {
  // out (N,OC), inp (N,IC), weight (OC,IC), bias (OC) or nullptr
  onednn::gemm(Operands::f32, false, true, N, OC, IC, inp, weight, bias, out, false);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC, bool accumulate_dinp, bool accumulate_dweight) {
  // dinp (N,IC) or nullptr, dweight (OC,IC), dbias (OC) or nullptr: accumulated or overwritten;
  // dout (N,OC), inp (N,IC), weight (OC,IC)
  if (dinp) onednn::gemm(Operands::f32, false, false, N, IC, OC, dout, weight, nullptr, dinp, accumulate_dinp);  // (+)= dout @ W
  onednn::gemm(Operands::f32, true, false, OC, IC, N, dout, inp, nullptr, dweight, accumulate_dweight);  // (+)= dout^T @ inp
  if (dbias) bias_backward(dbias, dout, N, OC, accumulate_dweight);
}

void matmul_forward_bf16(float* out, const float* inp, const bf16* weight, const float* bias, int N, int IC,
                         int OC) {
  // out (N,OC), inp (N,IC), weight (OC,IC) bf16, bias (OC) or nullptr
  const bf16* inp16 = round_to_bf16(inp, (size_t)N * IC, 0);
  onednn::gemm(Operands::bf16, false, true, N, OC, IC, inp16, weight, bias, out, false);
}

void matmul_backward_bf16(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                          const bf16* weight, int N, int IC, int OC, bool accumulate_dinp, bool accumulate_dweight) {
  // dinp (N,IC) or nullptr, dweight (OC,IC), dbias (OC) or nullptr: accumulated or overwritten;
  // dout (N,OC), inp (N,IC), weight (OC,IC) bf16
  const bf16* dout16 = round_to_bf16(dout, (size_t)N * OC, 0);
  const bf16* inp16 = round_to_bf16(inp, (size_t)N * IC, 1);
  if (dinp) onednn::gemm(Operands::bf16, false, false, N, IC, OC, dout16, weight, nullptr, dinp, accumulate_dinp);
  onednn::gemm(Operands::bf16, true, false, OC, IC, N, dout16, inp16, nullptr, dweight, accumulate_dweight);
  if (dbias) bias_backward(dbias, dout, N, OC, accumulate_dweight);
}

void matmul_gelu_forward(float* out, float* pre, const float* inp, const float* weight, const float* bias, int N,
                         int IC, int OC) {
  // out, pre (N,OC), inp (N,IC), weight (OC,IC), bias (OC) or nullptr
  matmul_forward(pre, inp, weight, bias, N, IC, OC);
  gelu_forward(out, pre, N * OC);
}

void matmul_gelu_forward_bf16(float* out, float* pre, const float* inp, const bf16* weight, const float* bias, int N,
                              int IC, int OC) {
  // out, pre (N,OC), inp (N,IC), weight (OC,IC) bf16, bias (OC) or nullptr
  matmul_forward_bf16(pre, inp, weight, bias, N, IC, OC);
  gelu_forward(out, pre, N * OC);
}

}  // namespace kernels::cpu
