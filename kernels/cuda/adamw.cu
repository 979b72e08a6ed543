// The optimizer step and the gradient norm, the CUDA twin of kernels/cpu/adamw.cpp.
// global_norm_squared is deterministic and independent of the device: for each range, a grid of
// blocks set by the sizes alone strides over it accumulating in double, each block reduces in a
// fixed tree, a kernel adds each range's block partials in order, and the host adds the ranges'
// sums in order, after one copy back for all of them.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

constexpr unsigned kMaxNormBlocks = 512;  // per range

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

// grid (blocks per range, ranges): partial[range][block] = the block's sum of g^2 over its stride
__global__ void norm_squared_kernel(double* partial, const float* g, const IndexRange* ranges) {
  __shared__ double shared[32];
  const IndexRange r = ranges[blockIdx.y];
  double acc = 0.0;
  for (size_t i = r.begin + (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < r.end;
       i += (size_t)gridDim.x * blockDim.x)
    acc += (double)g[i] * g[i];
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[(size_t)blockIdx.y * gridDim.x + blockIdx.x] = acc;
}

// sums[r] = partial[r][0] + partial[r][1] + ..., in order; a thread per range
__global__ void sum_partials_kernel(double* sums, const double* partial, int count, unsigned blocks) {
  int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= count) return;
  double s = 0.0;
  for (unsigned i = 0; i < blocks; i++) s += partial[(size_t)r * blocks + i];
  sums[r] = s;
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
  launch(adamw_kernel, (unsigned)blocks, kThreads, 0, params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay,
         grad_scale, bias1, bias2);
}

double global_norm_squared(const float* g, const IndexRange* ranges, int count) {
  // g: device; ranges (count): host. The result comes back to the host (this synchronises the
  // default stream, once).
  if (count == 0) return 0.0;
  size_t longest = 0;
  for (int r = 0; r < count; r++) longest = std::max(longest, ranges[r].end - ranges[r].begin);
  const unsigned blocks = std::max(1u, std::min(kMaxNormBlocks, blocks_for(longest)));
  struct Scratch {  // never freed: teardown order at exit is not ours
    DeviceArray<IndexRange> ranges;
    DeviceArray<double> partial, sums;
  };
  static auto* s = new Scratch();
  IndexRange* ranges_d = s->ranges.reserve(size_t(count));
  double* partial = s->partial.reserve(size_t(count) * blocks);
  double* sums_d = s->sums.reserve(size_t(count));
  cuda_check(cudaMemcpyAsync(ranges_d, ranges, size_t(count) * sizeof(IndexRange), cudaMemcpyHostToDevice, 0));
  launch(norm_squared_kernel, dim3(blocks, (unsigned)count), kThreads, 0, partial, g, ranges_d);
  launch(sum_partials_kernel, blocks_for(size_t(count)), kThreads, 0, sums_d, partial, count, blocks);
  std::vector<double> sums((size_t)count);
  cuda_check(cudaMemcpy(sums.data(), sums_d, size_t(count) * sizeof(double), cudaMemcpyDeviceToHost));
  double total = 0.0;
  for (double x : sums) total += x;
  return total;
}

}  // namespace kernels::cuda
