// Residual connection, the CUDA twin of kernels/cpu/residual.cpp: one element per thread.
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void residual_forward_kernel(float* out, const float* inp1, const float* inp2, int N) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N) out[i] = inp1[i] + inp2[i];
}

__global__ void residual_backward_kernel(float* dinp1, float* dinp2, const float* dout, int N) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N) {
    float d = dout[i];
    dinp1[i] += d;
    dinp2[i] += d;
  }
}

}  // namespace

void residual_forward(float* out, const float* inp1, const float* inp2, int N) {
  // out, inp1, inp2: (N), device
  if (N == 0) return;
  residual_forward_kernel<<<(N + kThreads - 1) / kThreads, kThreads>>>(out, inp1, inp2, N);
  cuda_check(cudaGetLastError());
}

void residual_backward(float* dinp1, float* dinp2, const float* dout, int N) {
  // dinp1, dinp2 (accumulated), dout: (N), device
  if (N == 0) return;
  residual_backward_kernel<<<(N + kThreads - 1) / kThreads, kThreads>>>(dinp1, dinp2, dout, N);
  cuda_check(cudaGetLastError());
}

}  // namespace kernels::cuda
