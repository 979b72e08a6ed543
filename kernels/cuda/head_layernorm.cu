// qk-norm, the CUDA twin of kernels/cpu/head_layernorm.cpp: LayerNorm over each head's hs dims,
// weight/bias (hs) shared by the heads; row n holds NH heads of hs floats from ptr + n*ld. One warp
// per (row, head) for the forward and for dinp (warp_layernorm_* in common.cuh, as layernorm.cu);
// dweight and dbias are deterministic column sums over the N*NH (row, head) pairs, in groups.
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

constexpr int kWarpsPerBlock = kThreads / 32;

// (row, head) pair r = n*NH + h -> offset of its hs floats
__device__ inline size_t head_off(size_t r, int NH, int hs, int ld) {
  return (r / NH) * ld + (r % NH) * hs;
}

__global__ void head_layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                              const float* weight, const float* bias, int N, int NH, int hs,
                                              int ld) {
  size_t r = (size_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= (size_t)N * NH) return;  // whole warps leave together
  size_t off = head_off(r, NH, hs, ld);
  RowStats st = warp_layernorm_forward(out + off, inp + off, weight, bias, hs);
  if (threadIdx.x % 32 == 0) {
    mean[r] = st.mean;
    rstd[r] = st.rstd;
  }
}

__global__ void head_layernorm_backward_dinp_kernel(float* dinp, const float* dout, const float* inp,
                                                    const float* weight, const float* mean, const float* rstd, int N,
                                                    int NH, int hs, int ld) {
  size_t r = (size_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= (size_t)N * NH) return;
  size_t off = head_off(r, NH, hs, ld);
  warp_layernorm_backward(dinp + off, dout + off, inp + off, weight, {mean[r], rstd[r]}, hs);
}

// The weight gradient sums over all N*NH (row, head) pairs but has only hs columns (2 blocks of
// column_sums for hs 64): the pairs are split into groups of kPairsPerGroup, a row of blocks per
// group writes its partial sums, and sum_groups_kernel adds the groups in order (deterministic).
constexpr int kPairsPerGroup = 1024;

// blockDim (32, 32), grid (a block per 32 of the hs dims, a block per group); partial (groups,2,hs) zeroed
__global__ void head_layernorm_backward_params_kernel(float* partial, const float* dout, const float* inp,
                                                      const float* mean, const float* rstd, int N, int NH, int hs,
                                                      int ld) {
  const int first = blockIdx.y * kPairsPerGroup;
  const int pairs = min(kPairsPerGroup, N * NH - first);
  float* part = partial + (size_t)blockIdx.y * 2 * hs;
  column_sums<2>({part, part + hs}, pairs, hs, [=](int j, int c, float* acc) {
    const int r = first + j;
    size_t i = head_off(r, NH, hs, ld) + c;
    float d = dout[i];
    acc[0] += d * (inp[i] - mean[r]) * rstd[r];
    acc[1] += d;
  });
}

// dweight[c] += sum_g partial[g][0][c], dbias[c] += sum_g partial[g][1][c], g in order
__global__ void sum_groups_kernel(float* dweight, float* dbias, const float* partial, int groups, int hs) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= hs) return;
  float w = 0.0f, b = 0.0f;
  for (int g = 0; g < groups; g++) {
    w += partial[((size_t)g * 2) * hs + c];
    b += partial[((size_t)g * 2 + 1) * hs + c];
  }
  dweight[c] += w;
  dbias[c] += b;
}

}  // namespace

void head_layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                            const float* bias, int N, int NH, int hs, int ld) {
  // out, inp: row n, head h at ptr + n*ld + h*hs (out may equal inp); mean, rstd (N*NH); weight, bias (hs); device
  size_t rows = (size_t)N * NH;
  if (rows == 0) return;
  launch(head_layernorm_forward_kernel, blocks_for(rows, kWarpsPerBlock), kThreads, 0, out, mean, rstd, inp, weight,
         bias, N, NH, hs, ld);
}

void head_layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                             const float* weight, const float* mean, const float* rstd, int N, int NH, int hs,
                             int ld) {
  // dinp, dweight, dbias (hs): accumulated; dinp, dout, inp laid out as the forward's inp; weight (hs);
  // mean, rstd (N*NH); device
  size_t rows = (size_t)N * NH;
  if (rows == 0) return;
  launch(head_layernorm_backward_dinp_kernel, blocks_for(rows, kWarpsPerBlock), kThreads, 0, dinp, dout, inp, weight,
         mean, rstd, N, NH, hs, ld);
  const int groups = (int)((rows + kPairsPerGroup - 1) / kPairsPerGroup);
  static auto* partial = new DeviceArray<float>();          // never freed: teardown order at exit is not ours
  float* part = partial->reserve((size_t)groups * 2 * hs);  // (groups,2,hs)
  cuda_check(cudaMemsetAsync(part, 0, (size_t)groups * 2 * hs * sizeof(float)));
  launch(head_layernorm_backward_params_kernel, dim3(blocks_for(hs, 32), groups), dim3(32, 32), 0, part, dout, inp,
         mean, rstd, N, NH, hs, ld);
  launch(sum_groups_kernel, blocks_for(hs), kThreads, 0, dweight, dbias, part, groups, hs);
}

}  // namespace kernels::cuda
