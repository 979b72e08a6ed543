// LayerNorm over the last dimension, the CUDA twin of kernels/cpu/layernorm.cpp: eps 1e-5, biased
// variance, two-pass statistics in fp32. One warp per row for the forward and for dinp
// (warp_layernorm_* in common.cuh, shared with head_layernorm.cu); dweight and dbias are
// deterministic column sums over the rows (column_sums in common.cuh).
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

constexpr int kWarpsPerBlock = kThreads / 32;

__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                         const float* weight, const float* bias, int N, int C) {
  int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= N) return;  // whole warps leave together
  RowStats st = warp_layernorm_forward(out + (size_t)row * C, inp + (size_t)row * C, weight, bias, C);
  if (threadIdx.x % 32 == 0) {
    mean[row] = st.mean;
    rstd[row] = st.rstd;
  }
}

__global__ void layernorm_backward_dinp_kernel(float* dinp, const float* dout, const float* inp,
                                               const float* weight, const float* mean, const float* rstd, int N,
                                               int C) {
  int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= N) return;
  size_t off = (size_t)row * C;
  warp_layernorm_backward(dinp + off, dout + off, inp + off, weight, {mean[row], rstd[row]}, C);
}

// blockDim (32, 32), a block per 32 channels
__global__ void layernorm_backward_params_kernel(float* dweight, float* dbias, const float* dout, const float* inp,
                                                 const float* mean, const float* rstd, int N, int C) {
  column_sums<2>({dweight, dbias}, N, C, [=](int i, int c, float* acc) {
    float d = dout[(size_t)i * C + c];
    acc[0] += d * (inp[(size_t)i * C + c] - mean[i]) * rstd[i];
    acc[1] += d;
  });
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C) {
  // out, inp: (N,C); mean, rstd: (N); weight, bias: (C); device
  if (N == 0) return;
  launch(layernorm_forward_kernel, blocks_for(N, kWarpsPerBlock), kThreads, 0, out, mean, rstd, inp, weight, bias, N,
         C);
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int N, int C) {
  // dinp (N,C), dweight, dbias (C): accumulated; dout, inp (N,C); weight (C); mean, rstd (N); device
  if (N == 0) return;
  launch(layernorm_backward_dinp_kernel, blocks_for(N, kWarpsPerBlock), kThreads, 0, dinp, dout, inp, weight, mean,
         rstd, N, C);
  launch(layernorm_backward_params_kernel, blocks_for(C, 32), dim3(32, 32), 0, dweight, dbias, dout, inp, mean, rstd, N,
         C);
}

}  // namespace kernels::cuda
