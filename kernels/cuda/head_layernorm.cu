// qk-norm, the CUDA twin of kernels/cpu/head_layernorm.cpp: LayerNorm over each head's hs dims,
// weight/bias (hs) shared by the heads; row n holds NH heads of hs floats from ptr + n*ld. One warp
// per (row, head) for the forward and for dinp (warp_layernorm_* in common.cuh, as layernorm.cu);
// dweight and dbias are deterministic column sums over the N*NH (row, head) pairs.
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

constexpr int kWarpsPerBlock = kThreads / 32;

// (row, head) pair r = n*NH + h -> offset of its hs floats
__device__ inline size_t head_off(size_t r, int NH, int hs, int ld) {
  return (r / NH) * ld + (r % NH) * hs;
}

__global__ void head_layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                              const float* weight, const float* bias, int N, int NH, int hs,
                                              int ld) {
  size_t r = (size_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= (size_t)N * NH) return;  // whole warps leave together
  size_t off = head_off(r, NH, hs, ld);
  RowStats st = warp_layernorm_forward(out + off, inp + off, weight, bias, hs);
  if (threadIdx.x % 32 == 0) {
    mean[r] = st.mean;
    rstd[r] = st.rstd;
  }
}

__global__ void head_layernorm_backward_dinp_kernel(float* dinp, const float* dout, const float* inp,
                                                    const float* weight, const float* mean, const float* rstd, int N,
                                                    int NH, int hs, int ld) {
  size_t r = (size_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= (size_t)N * NH) return;
  size_t off = head_off(r, NH, hs, ld);
  warp_layernorm_backward(dinp + off, dout + off, inp + off, weight, {mean[r], rstd[r]}, hs);
}

// blockDim (32, 32), a block per 32 of the hs dims
__global__ void head_layernorm_backward_params_kernel(float* dweight, float* dbias, const float* dout,
                                                      const float* inp, const float* mean, const float* rstd, int N,
                                                      int NH, int hs, int ld) {
  column_sums<2>({dweight, dbias}, N * NH, hs, [=](int r, int c, float* acc) {
    size_t i = head_off(r, NH, hs, ld) + c;
    float d = dout[i];
    acc[0] += d * (inp[i] - mean[r]) * rstd[r];
    acc[1] += d;
  });
}

}  // namespace

void head_layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                            const float* bias, int N, int NH, int hs, int ld) {
  // out, inp: row n, head h at ptr + n*ld + h*hs (out may equal inp); mean, rstd (N*NH); weight, bias (hs); device
  size_t rows = (size_t)N * NH;
  if (rows == 0) return;
  head_layernorm_forward_kernel<<<blocks_for(rows, kWarpsPerBlock), kThreads>>>(out, mean, rstd, inp, weight, bias,
                                                                                 N, NH, hs, ld);
  cuda_check(cudaGetLastError());
}

void head_layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                             const float* weight, const float* mean, const float* rstd, int N, int NH, int hs,
                             int ld) {
  // dinp, dweight, dbias (hs): accumulated; dinp, dout, inp laid out as the forward's inp; weight (hs);
  // mean, rstd (N*NH); device
  size_t rows = (size_t)N * NH;
  if (rows == 0) return;
  head_layernorm_backward_dinp_kernel<<<blocks_for(rows, kWarpsPerBlock), kThreads>>>(dinp, dout, inp, weight, mean,
                                                                                      rstd, N, NH, hs, ld);
  cuda_check(cudaGetLastError());
  head_layernorm_backward_params_kernel<<<blocks_for(hs, 32), dim3(32, 32)>>>(dweight, dbias, dout, inp, mean, rstd,
                                                                              N, NH, hs, ld);
  cuda_check(cudaGetLastError());
}

}  // namespace kernels::cuda
