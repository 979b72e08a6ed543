// Token plus position embedding over a vocabulary shard (rows [v0, v0+Vl) of wte), the CUDA twin
// of kernels/cpu/encoder.cpp.
// Backward: dwte rows collide when a token repeats in the batch, so dwte takes atomicAdd (its
// summation order, and so its last bits, can vary run to run); dwpe is deterministic: one thread
// per (t, c) sums over b in order.
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

__global__ void encoder_forward_kernel(float* out, const int* inp, const float* wte, const float* wpe, int B,
                                       int T, int C, int v0, int Vl) {
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t total = (size_t)B * T * C;
  if (idx >= total) return;
  size_t bt = idx / C;
  int c = (int)(idx % C);
  int row = inp[bt] - v0;
  float v = 0.0f;  // another shard's token: its owner adds the position too
  if (row >= 0 && row < Vl) {
    v = wte[(size_t)row * C + c];
    if (wpe) v += wpe[(bt % T) * C + c];
  }
  out[idx] = v;
}

__global__ void encoder_backward_wte_kernel(float* dwte, const float* dout, const int* inp, int B, int T, int C,
                                            int v0, int Vl) {
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t total = (size_t)B * T * C;
  if (idx >= total) return;
  size_t bt = idx / C;
  int c = (int)(idx % C);
  int row = inp[bt] - v0;
  if (row >= 0 && row < Vl) atomicAdd(dwte + (size_t)row * C + c, dout[idx]);
}

__global__ void encoder_backward_wpe_kernel(float* dwpe, const float* dout, int B, int T, int C) {
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;  // (t, c)
  size_t TC = (size_t)T * C;
  if (idx >= TC) return;
  float acc = 0.0f;
  for (int b = 0; b < B; b++) acc += dout[b * TC + idx];
  dwpe[idx] += acc;
}

}  // namespace

void encoder_forward(float* out, const int* inp, const float* wte, const float* wpe, int B, int T, int C, int v0,
                     int Vl) {
  // out (B,T,C), inp (B,T), wte (Vl,C), wpe (maxT,C) or nullptr; device
  size_t total = (size_t)B * T * C;
  if (total == 0) return;
  launch(encoder_forward_kernel, blocks_for(total), kThreads, 0, out, inp, wte, wpe, B, T, C, v0, Vl);
}

void encoder_backward(float* dwte, float* dwpe, const float* dout, const int* inp, int B, int T, int C, int v0,
                      int Vl) {
  // dwte (Vl,C) and dwpe (maxT,C) or nullptr, accumulated; dout (B,T,C), inp (B,T); device
  size_t total = (size_t)B * T * C;
  if (total == 0) return;
  launch(encoder_backward_wte_kernel, blocks_for(total), kThreads, 0, dwte, dout, inp, B, T, C, v0, Vl);
  if (dwpe) {
    launch(encoder_backward_wpe_kernel, blocks_for((size_t)T * C), kThreads, 0, dwpe, dout, B, T, C);
  }
}

}  // namespace kernels::cuda
