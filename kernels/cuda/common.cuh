#pragma once
// Device-side helpers shared by the CUDA kernels (not a kernel twin): launch sizes, warp and
// block reductions. cuda_check, cublas_check and the shared cuBLAS handle come with it.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.cuh"

namespace kernels::cuda {

constexpr int kThreads = 256;  // default block size of the elementwise kernels

inline unsigned blocks_for(size_t n, int threads = kThreads) {
  return (unsigned)((n + threads - 1) / threads);
}

template <class T>
__device__ inline T warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ inline float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Sum over a block whose size is a multiple of 32 (at most 1024); every thread gets the result.
// `shared` holds at least 32 T. Deterministic: a fixed tree for a fixed block size.
template <class T>
__device__ inline T block_sum(T v, T* shared) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < nwarps ? shared[lane] : T(0);
  return warp_sum(v);
}

__device__ inline float block_max(float v, float* shared) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < nwarps ? shared[lane] : -INFINITY;
  return warp_max(v);
}

}  // namespace kernels::cuda
