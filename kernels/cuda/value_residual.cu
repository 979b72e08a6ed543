// The paper's value residual, the CUDA twin of kernels/cpu/value_residual.cpp: out = v +
// (anchor - v)*gate, gate = w[0] (linear) or sigmoid(w[c] + z[n,c]) (rwkv). One element per thread.
// The backward's dw is deterministic: rwkv's a column sum of dz (column_sums in common.cuh),
// linear's a fixed grid of kSumBlocks blocks that each reduce in a fixed tree, their partials then
// added in order on the device (no host round trip, unlike global_norm_squared).
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

constexpr int kSumBlocks = 512;

__device__ inline float gate_of(const float* w, const float* z, size_t i, int c, ValueResidualMode mode) {
  return mode == ValueResidualMode::linear ? w[0] : 1.0f / (1.0f + expf(-(w[c] + z[i])));
}

__global__ void value_residual_forward_kernel(float* out, int ld_out, const float* v, int ld_v, const float* anchor,
                                              const float* z, const float* w, int N, int C, ValueResidualMode mode) {
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;  // (n, c)
  if (idx >= (size_t)N * C) return;
  size_t n = idx / C;
  int c = (int)(idx % C);
  float vi = v[n * ld_v + c], g = gate_of(w, z, idx, c, mode);
  out[n * ld_out + c] = vi + (anchor[idx] - vi) * g;
}

// dv, danchor and (rwkv) dz per element, in a fixed grid of kSumBlocks; linear: each block's sum of
// dgate in partial[blockIdx.x] (partial nullptr for rwkv)
__global__ void value_residual_backward_kernel(float* dv, int ld_dv, float* danchor, float* dz, double* partial,
                                               const float* dout, int ld_dout, const float* v, int ld_v,
                                               const float* anchor, const float* z, const float* w, int N, int C,
                                               ValueResidualMode mode) {
  __shared__ double shared[32];
  double sum = 0.0;
  for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < (size_t)N * C;
       idx += (size_t)gridDim.x * blockDim.x) {
    size_t n = idx / C;
    int c = (int)(idx % C);
    float d = dout[n * ld_dout + c], g = gate_of(w, z, idx, c, mode);
    float dgate = d * (anchor[idx] - v[n * ld_v + c]);
    dv[n * ld_dv + c] = d * (1.0f - g);
    danchor[idx] += d * g;
    if (partial) sum += dgate;
    else dz[idx] = dgate * g * (1.0f - g);
  }
  if (!partial) return;
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__global__ void value_residual_linear_dw_kernel(float* dw, const double* partial) {  // one thread
  double sum = 0.0;
  for (int i = 0; i < kSumBlocks; i++) sum += partial[i];
  dw[0] += (float)sum;
}

// dw[c] += sum over the rows of dz; blockDim (32, 32)
__global__ void value_residual_rwkv_dw_kernel(float* dw, const float* dz, int N, int C) {
  column_sums<1>({dw}, N, C, [=](int row, int c, float* acc) { acc[0] += dz[(size_t)row * C + c]; });
}

}  // namespace

void value_residual_forward(float* out, int ld_out, const float* v, int ld_v, const float* anchor, const float* z,
                            const float* w, int N, int C, ValueResidualMode mode) {
  // out (N rows of ld_out), v (N rows of ld_v), anchor (N,C); z (N,C), w (C) rwkv; w (1) linear; device
  size_t total = (size_t)N * C;
  if (total == 0) return;
  launch(value_residual_forward_kernel, blocks_for(total), kThreads, 0, out, ld_out, v, ld_v, anchor, z, w, N, C, mode);
}

void value_residual_backward(float* dv, int ld_dv, float* danchor, float* dz, float* dw, const float* dout,
                             int ld_dout, const float* v, int ld_v, const float* anchor, const float* z,
                             const float* w, int N, int C, ValueResidualMode mode) {
  // dv (N rows of ld_dv), dz (N,C) rwkv: written; danchor (N,C), dw (C) rwkv or (1) linear:
  // accumulated; dout (N rows of ld_dout), v (N rows of ld_v), anchor (N,C); z (N,C) rwkv; device
  if ((size_t)N * C == 0) return;
  static double* partial = [] {  // one small buffer for the process, never freed
    double* p = nullptr;
    cuda_check(cudaMalloc(&p, kSumBlocks * sizeof(double)));
    return p;
  }();
  const bool linear = mode == ValueResidualMode::linear;
  launch(value_residual_backward_kernel, kSumBlocks, kThreads, 0, dv, ld_dv, danchor, dz, linear ? partial : nullptr,
         dout, ld_dout, v, ld_v, anchor, z, w, N, C, mode);
  if (linear)
    launch(value_residual_linear_dw_kernel, 1, 1, 0, dw, partial);
  else
    launch(value_residual_rwkv_dw_kernel, blocks_for(C, 32), dim3(32, 32), 0, dw, dz, N, C);
}

}  // namespace kernels::cuda
