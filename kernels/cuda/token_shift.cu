// RWKV-style token shift, the CUDA twin of kernels/cpu/token_shift.cpp: out[b,t] = mix*inp[b,t] +
// (1-mix)*inp[b,t-1], the row before t = 0 being prev[b] or zero. One element per thread for out
// and dinp; dmix is a deterministic column sum over the B*T rows (column_sums in common.cuh).
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

__global__ void token_shift_forward_kernel(float* out, const float* inp, const float* prev, const float* mix, int B,
                                           int T, int C) {
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;  // (b, t, c)
  if (idx >= (size_t)B * T * C) return;
  int c = (int)(idx % C);
  size_t bt = idx / C;
  int t = (int)(bt % T);
  const float* xp = t > 0 ? inp + idx - C : (prev ? prev + (bt / T) * C + c : nullptr);
  out[idx] = xp ? mix[c] * inp[idx] + (1.0f - mix[c]) * *xp : mix[c] * inp[idx];
}

// dinp[b,t] += mix*dout[b,t] + (1-mix)*dout[b,t+1], the two terms added one after the other as on the CPU
__global__ void token_shift_backward_dinp_kernel(float* dinp, const float* dout, const float* mix, int B, int T,
                                                 int C) {
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;  // (b, t, c)
  if (idx >= (size_t)B * T * C) return;
  int c = (int)(idx % C);
  int t = (int)((idx / C) % T);
  float di = dinp[idx] + mix[c] * dout[idx];
  if (t + 1 < T) di += (1.0f - mix[c]) * dout[idx + C];
  dinp[idx] = di;
}

// dmix[c] += sum over rows (b,t) of dout * (x_t - x_{t-1}), x_{-1} = 0; blockDim (32, 32)
__global__ void token_shift_backward_dmix_kernel(float* dmix, const float* dout, const float* inp, int B, int T,
                                                 int C) {
  column_sums<1>({dmix}, B * T, C, [=](int row, int c, float* acc) {
    size_t i = (size_t)row * C + c;
    acc[0] += dout[i] * (inp[i] - (row % T > 0 ? inp[i - C] : 0.0f));
  });
}

}  // namespace

void token_shift_forward(float* out, const float* inp, const float* prev, const float* mix, int B, int T, int C) {
  // out, inp: (B,T,C); prev (B,C) or nullptr; mix (C); device. out must not alias inp.
  size_t total = (size_t)B * T * C;
  if (total == 0) return;
  token_shift_forward_kernel<<<blocks_for(total), kThreads>>>(out, inp, prev, mix, B, T, C);
  cuda_check(cudaGetLastError());
}

void token_shift_backward(float* dinp, float* dmix, const float* dout, const float* inp, const float* mix, int B,
                          int T, int C) {
  // dinp (B,T,C), dmix (C): accumulated; dout, inp (B,T,C); mix (C); device
  size_t total = (size_t)B * T * C;
  if (total == 0) return;
  token_shift_backward_dinp_kernel<<<blocks_for(total), kThreads>>>(dinp, dout, mix, B, T, C);
  cuda_check(cudaGetLastError());
  token_shift_backward_dmix_kernel<<<blocks_for(C, 32), dim3(32, 32)>>>(dmix, dout, inp, B, T, C);
  cuda_check(cudaGetLastError());
}

}  // namespace kernels::cuda
