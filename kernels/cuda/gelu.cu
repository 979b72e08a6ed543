// GELU (tanh approximation, as GPT-2), the CUDA twin of kernels/cpu/gelu.cpp: one element per thread.
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

__global__ void gelu_forward_kernel(float* out, const float* inp, int N) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N) {
    float x = inp[i];
    out[i] = 0.5f * x * (1.0f + tanhf(kSqrt2OverPi * (x + kCubic * x * x * x)));
  }
}

__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout, int N) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N) {
    float x = inp[i];
    float th = tanhf(kSqrt2OverPi * (x + kCubic * x * x * x));
    float dth = (1.0f - th * th) * kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
    dinp[i] = dout[i] * (0.5f * (1.0f + th) + 0.5f * x * dth);
  }
}

}  // namespace

void gelu_forward(float* out, const float* inp, int N) {
  // out, inp: (N), device
  if (N == 0) return;
  launch(gelu_forward_kernel, blocks_for(N), kThreads, 0, out, inp, N);
}

void gelu_backward(float* dinp, const float* inp, const float* dout, int N) {
  // dinp (written; may be dout), inp, dout: (N), device
  if (N == 0) return;
  launch(gelu_backward_kernel, blocks_for(N), kThreads, 0, dinp, inp, dout, N);
}

}  // namespace kernels::cuda
