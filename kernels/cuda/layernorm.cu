// LayerNorm over the last dimension, the CUDA twin of kernels/cpu/layernorm.cpp: eps 1e-5, biased
// variance, two-pass statistics in fp32. One warp per row for the forward and for dinp; dweight
// and dbias are deterministic: a 32 x 32 block owns 32 channels, its rows of threads stride the
// rows of the input, and the partial sums meet in shared memory in a fixed order.
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

constexpr int kWarpsPerBlock = kThreads / 32;

__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                         const float* weight, const float* bias, int N, int C) {
  int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (row >= N) return;  // whole warps leave together
  const float* x = inp + (size_t)row * C;
  float* o = out + (size_t)row * C;
  float sum = 0.0f;
  for (int c = lane; c < C; c += 32) sum += x[c];
  float m = warp_sum(sum) / C;
  float sq = 0.0f;
  for (int c = lane; c < C; c += 32) {
    float d = x[c] - m;
    sq += d * d;
  }
  float s = 1.0f / sqrtf(warp_sum(sq) / C + 1e-5f);
  for (int c = lane; c < C; c += 32) o[c] = (x[c] - m) * s * weight[c] + bias[c];
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

__global__ void layernorm_backward_dinp_kernel(float* dinp, const float* dout, const float* inp,
                                               const float* weight, const float* mean, const float* rstd, int N,
                                               int C) {
  int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (row >= N) return;
  const float* x = inp + (size_t)row * C;
  const float* d = dout + (size_t)row * C;
  float* di = dinp + (size_t)row * C;
  float m = mean[row], s = rstd[row];
  float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
  for (int c = lane; c < C; c += 32) {
    float dnorm = d[c] * weight[c];
    dnorm_mean += dnorm;
    dnorm_norm_mean += dnorm * (x[c] - m) * s;
  }
  dnorm_mean = warp_sum(dnorm_mean) / C;
  dnorm_norm_mean = warp_sum(dnorm_norm_mean) / C;
  for (int c = lane; c < C; c += 32)
    di[c] += (d[c] * weight[c] - dnorm_mean - (x[c] - m) * s * dnorm_norm_mean) * s;
}

// blockDim (32, 32): threadIdx.x a channel of the block's 32, threadIdx.y a stride over rows.
__global__ void layernorm_backward_params_kernel(float* dweight, float* dbias, const float* dout, const float* inp,
                                                 const float* mean, const float* rstd, int N, int C) {
  __shared__ float sw[32][33], sb[32][33];
  int c = blockIdx.x * 32 + threadIdx.x;
  float aw = 0.0f, ab = 0.0f;
  if (c < C) {
    for (int i = threadIdx.y; i < N; i += 32) {
      float d = dout[(size_t)i * C + c];
      aw += d * (inp[(size_t)i * C + c] - mean[i]) * rstd[i];
      ab += d;
    }
  }
  sw[threadIdx.y][threadIdx.x] = aw;
  sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float tw = 0.0f, tb = 0.0f;
    for (int y = 0; y < 32; y++) {
      tw += sw[y][threadIdx.x];
      tb += sb[y][threadIdx.x];
    }
    dweight[c] += tw;
    dbias[c] += tb;
  }
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C) {
  // out, inp: (N,C); mean, rstd: (N); weight, bias: (C); device
  if (N == 0) return;
  layernorm_forward_kernel<<<blocks_for(N, kWarpsPerBlock), kThreads>>>(out, mean, rstd, inp, weight, bias, N, C);
  cuda_check(cudaGetLastError());
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int N, int C) {
  // dinp (N,C), dweight, dbias (C): accumulated; dout, inp (N,C); weight (C); mean, rstd (N); device
  if (N == 0) return;
  layernorm_backward_dinp_kernel<<<blocks_for(N, kWarpsPerBlock), kThreads>>>(dinp, dout, inp, weight, mean, rstd,
                                                                               N, C);
  cuda_check(cudaGetLastError());
  layernorm_backward_params_kernel<<<blocks_for(C, 32), dim3(32, 32)>>>(dweight, dbias, dout, inp, mean, rstd, N,
                                                                         C);
  cuda_check(cudaGetLastError());
}

}  // namespace kernels::cuda
