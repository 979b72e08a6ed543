// Data movement between the trainer's layouts, the CUDA twin of kernels/cpu/layout.cpp: one element
// per thread, so each output element is written by one thread with the CPU's float operations.
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

// element i of (B,NH,T,hs) <-> its place in the (B,T) rows of stride ld
__device__ inline size_t row_index(size_t i, int T, int NH, int hs, int ld) {
  const size_t d = i % hs, t = (i / hs) % T, h = (i / (size_t(hs) * T)) % NH, b = i / (size_t(hs) * T * NH);
  return (b * T + t) * ld + h * hs + d;
}

__global__ void split_heads_kernel(float* out, const float* inp, size_t n, int T, int NH, int hs, int ld) {
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = inp[row_index(i, T, NH, hs, ld)];
}

__global__ void merge_heads_kernel(float* out, const float* inp, size_t n, int T, int NH, int hs, int ld,
                                   int accumulate) {
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float& o = out[row_index(i, T, NH, hs, ld)];
  o = accumulate ? o + inp[i] : inp[i];
}

__global__ void axpby_rows_kernel(float* out, const float* inp, float a, float b, size_t n, int C, size_t ldo,
                                  size_t ldi) {
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const size_t r = i / C, c = i % C;
  float& o = out[r * ldo + c];
  const float x = inp[r * ldi + c];
  o = a == 0.0f ? b * x : a * o + b * x;
}

}  // namespace

void split_heads(float* out, const float* inp, int B, int T, int NH, int hs, int ld) {
  // out (B,NH,T,hs); inp (B,T) rows of stride ld; device
  const size_t n = size_t(B) * NH * T * hs;
  if (n == 0) return;
  launch(split_heads_kernel, blocks_for(n), kThreads, 0, out, inp, n, T, NH, hs, ld);
}

void merge_heads(float* out, const float* inp, int B, int T, int NH, int hs, int ld, int accumulate) {
  // out (B,T) rows of stride ld; inp (B,NH,T,hs); device
  const size_t n = size_t(B) * NH * T * hs;
  if (n == 0) return;
  launch(merge_heads_kernel, blocks_for(n), kThreads, 0, out, inp, n, T, NH, hs, ld, accumulate);
}

void axpby_rows(float* out, const float* inp, float a, float b, size_t N, int C, size_t ldo, size_t ldi) {
  // out (N rows of C at stride ldo); inp (N rows of C at stride ldi, or one row when ldi is 0); device
  const size_t n = N * size_t(C);
  if (n == 0) return;
  launch(axpby_rows_kernel, blocks_for(n), kThreads, 0, out, inp, a, b, n, C, ldo, ldi);
}

}  // namespace kernels::cuda
