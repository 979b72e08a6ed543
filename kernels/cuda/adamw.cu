// The optimizer step and the gradient norm, the CUDA twin of kernels/cpu/adamw.cpp.
// global_norm_squared is deterministic and independent of the device: a fixed grid of kNormBlocks
// blocks strides over g accumulating in double, each block reduces in a fixed tree, and the host
// sums the kNormBlocks partials in order.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

constexpr int kNormBlocks = 512;

__global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, size_t n, float lr, float beta1,
                             float beta2, float eps, float weight_decay, float grad_scale, float bias1, float bias2) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float g = grads[i] * grad_scale;
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] -= lr * ((mi / bias1) / (sqrtf(vi / bias2) + eps) + weight_decay * params[i]);
  }
}

__global__ void norm_squared_kernel(double* partial, const float* g, size_t n) {
  __shared__ double shared[32];
  double acc = 0.0;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    acc += (double)g[i] * g[i];
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

}  // namespace

void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, float grad_scale, int t) {
  // params, grads, m, v: (n), device
  if (n == 0) return;
  // the bias corrections on the host, exactly as the CPU twin computes them
  float bias1 = 1.0f - std::pow(beta1, (float)t);
  float bias2 = 1.0f - std::pow(beta2, (float)t);
  size_t blocks = std::min<size_t>(blocks_for(n), 65535u * 8u);
  adamw_kernel<<<(unsigned)blocks, kThreads>>>(params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay,
                                               grad_scale, bias1, bias2);
  cuda_check(cudaGetLastError());
}

float global_norm_squared(const float* g, size_t n) {
  // g: (n), device; the result comes back to the host (this synchronises the default stream)
  if (n == 0) return 0.0f;
  static double* partial = [] {  // one small buffer for the process, never freed
    double* p = nullptr;
    cuda_check(cudaMalloc(&p, kNormBlocks * sizeof(double)));
    return p;
  }();
  norm_squared_kernel<<<kNormBlocks, kThreads>>>(partial, g, n);
  cuda_check(cudaGetLastError());
  std::vector<double> host(kNormBlocks);
  cuda_check(cudaMemcpy(host.data(), partial, kNormBlocks * sizeof(double), cudaMemcpyDeviceToHost));
  double sum = 0.0;
  for (double p : host) sum += p;
  return (float)sum;
}

}  // namespace kernels::cuda
