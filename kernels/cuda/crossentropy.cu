// Fused softmax + cross-entropy over the padded vocabulary, the CUDA twin of
// kernels/cpu/crossentropy.cpp: one block per row. Each thread keeps an online softmax (running
// max and sum) over its strided columns; the block combines them, writes the loss and, with
// dloss != 0, overwrites the row with dloss * (softmax - onehot), zero in the padded columns [V,Vp)
// and on rows whose target is ignore_index. Probabilities never go to memory.
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

constexpr int kRowThreads = 512;

__global__ void crossentropy_kernel(float* logits, float* losses, const int* targets, int V, int Vp, float dloss,
                                    int ignore_index) {
  __shared__ float shared[32];
  float* row = logits + (size_t)blockIdx.x * Vp;
  int target = targets[blockIdx.x];
  if (target == ignore_index) {
    if (threadIdx.x == 0) losses[blockIdx.x] = 0.0f;
    if (dloss != 0.0f)
      for (int c = threadIdx.x; c < Vp; c += blockDim.x) row[c] = 0.0f;
    return;  // the whole block leaves together
  }
  float target_logit = row[target];  // read before any thread overwrites the row
  float m = -INFINITY, s = 0.0f;
  for (int c = threadIdx.x; c < V; c += blockDim.x) {
    float x = row[c];
    if (x > m) {
      s *= expf(m - x);
      m = x;
    }
    s += expf(x - m);
  }
  float mx = block_max(m, shared);
  float sum = block_sum(m == -INFINITY ? 0.0f : s * expf(m - mx), shared);
  float shift = mx + logf(sum);
  if (threadIdx.x == 0) losses[blockIdx.x] = shift - target_logit;
  if (dloss == 0.0f) return;
  for (int c = threadIdx.x; c < Vp; c += blockDim.x) {
    float g = 0.0f;
    if (c < V) {
      g = dloss * expf(row[c] - shift);
      if (c == target) g -= dloss;
    }
    row[c] = g;
  }
}

}  // namespace

void crossentropy_forward_backward(float* logits, float* losses, const int* targets, int N, int V, int Vp,
                                   float dloss, int ignore_index) {
  // logits (N,Vp): in logits, out dlogits when dloss != 0; losses (N); targets (N); device
  if (N == 0) return;
  crossentropy_kernel<<<N, kRowThreads>>>(logits, losses, targets, V, Vp, dloss, ignore_index);
  cuda_check(cudaGetLastError());
}

}  // namespace kernels::cuda
