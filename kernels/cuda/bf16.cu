// Stochastic rounding of fp32 to bf16, the CUDA twin of kernels/cpu/bf16.cpp: one element per
// thread, each drawing its 16 random bits from kernels/bf16.h's stochastic_round_bits, the very
// host+device function the CPU twin calls, so the two backends give the same bits. (A thread
// computes a whole Philox block for its 16 bits, 8x more arithmetic than needed; this runs once
// per weight per step, far from the bottleneck.)
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

__global__ void bf16_round_stochastic_kernel(bf16* out, const float* inp, size_t n, uint64_t seed, uint64_t step,
                                             uint64_t offset) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = bf16_round_stochastic_bits(inp[i], stochastic_round_bits(seed, step, offset + i));
}

}  // namespace

void bf16_round_stochastic(bf16* out, const float* inp, size_t n, uint64_t seed, uint64_t step, uint64_t offset) {
  // out (n) bf16, inp (n) fp32; device. offset: the global index of inp[0]
  if (n == 0) return;
  launch(bf16_round_stochastic_kernel, blocks_for(n), kThreads, 0, out, inp, n, seed, step, offset);
}

}  // namespace kernels::cuda
