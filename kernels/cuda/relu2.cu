// Squared ReLU, the CUDA twin of kernels/cpu/relu2.cpp: one element per thread.
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

__global__ void relu2_forward_kernel(float* out, const float* inp, int N) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N) {
    float r = inp[i] > 0.0f ? inp[i] : 0.0f;
    out[i] = r * r;
  }
}

__global__ void relu2_backward_kernel(float* dinp, const float* inp, const float* dout, int N) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N) {
    float r = inp[i] > 0.0f ? inp[i] : 0.0f;
    dinp[i] = 2.0f * r * dout[i];
  }
}

}  // namespace

void relu2_forward(float* out, const float* inp, int N) {
  // out, inp: (N), device
  if (N == 0) return;
  launch(relu2_forward_kernel, blocks_for(N), kThreads, 0, out, inp, N);
}

void relu2_backward(float* dinp, const float* inp, const float* dout, int N) {
  // dinp (written; may be dout), inp, dout: (N), device
  if (N == 0) return;
  launch(relu2_backward_kernel, blocks_for(N), kThreads, 0, dinp, inp, dout, N);
}

}  // namespace kernels::cuda
