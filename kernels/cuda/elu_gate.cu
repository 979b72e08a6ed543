// The KVM merge gate g = 1 + elu(x), the CUDA twin of kernels/cpu/elu_gate.cpp: one element per
// thread. expf is CUDA's full-precision one (within 2 ulp; no fast math), against glibc's exp.
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

__global__ void elu_gate_forward_kernel(float* out, const float* inp, int N) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N) {
    float x = inp[i];
    out[i] = x > 0.0f ? 1.0f + x : expf(x);
  }
}

__global__ void elu_gate_backward_kernel(float* dinp, const float* inp, const float* dout, int N) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N) {
    float x = inp[i];
    dinp[i] += dout[i] * (x > 0.0f ? 1.0f : expf(x));
  }
}

}  // namespace

void elu_gate_forward(float* out, const float* inp, int N) {
  // out, inp: (N); device
  if (N == 0) return;
  launch(elu_gate_forward_kernel, blocks_for(N), kThreads, 0, out, inp, N);
}

void elu_gate_backward(float* dinp, const float* inp, const float* dout, int N) {
  // dinp (accumulated), inp, dout: (N); device
  if (N == 0) return;
  launch(elu_gate_backward_kernel, blocks_for(N), kThreads, 0, dinp, inp, dout, N);
}

}  // namespace kernels::cuda
