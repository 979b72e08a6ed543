// Fused softmax + cross-entropy over the padded vocabulary, the CUDA twin of
// kernels/cpu/crossentropy.cpp: one block per row. Each thread keeps an online softmax (running
// max and sum) over its strided columns; the block combines them, writes the loss and, with
// dloss != 0, overwrites the row with dloss * (softmax - onehot), zero in the padded columns [V,Vp)
// and on rows whose target is ignore_index. Probabilities never go to memory.
// The vocabulary-parallel phases (crossentropy_shard_*) are one block per row as well.
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

constexpr int kRowThreads = 512;

// A row of `width` columns <- dloss * (softmax - onehot) by the whole block: the softmax of its
// first `real` columns from their log-normaliser `shift`, target column t (none when outside
// [0, real)); the columns from `real` on get 0. Each column is read, then written, by one thread.
__device__ inline void write_dlogits(float* row, int real, int width, float shift, int t, float dloss) {
  for (int c = threadIdx.x; c < width; c += blockDim.x) {
    float g = 0.0f;
    if (c < real) {
      g = dloss * expf(row[c] - shift);
      if (c == t) g -= dloss;
    }
    row[c] = g;
  }
}

__global__ void crossentropy_kernel(float* logits, float* losses, const int* targets, int V, int Vp, float dloss,
                                    int ignore_index) {
  __shared__ float shared[32];
  float* row = logits + (size_t)blockIdx.x * Vp;
  int target = targets[blockIdx.x];
  if (target == ignore_index) {
    if (threadIdx.x == 0) losses[blockIdx.x] = 0.0f;
    if (dloss != 0.0f) write_dlogits(row, 0, Vp, 0.0f, -1, dloss);
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
  if (dloss != 0.0f) write_dlogits(row, V, Vp, shift, target, dloss);
}

__global__ void shard_max_kernel(float* mx, const float* logits, int real, int Vl) {
  __shared__ float shared[32];
  const float* row = logits + (size_t)blockIdx.x * Vl;
  float m = -INFINITY;
  for (int c = threadIdx.x; c < real; c += blockDim.x) m = fmaxf(m, row[c]);
  m = block_max(m, shared);
  if (threadIdx.x == 0) mx[blockIdx.x] = m;
}

__global__ void shard_sums_kernel(float* sums, float* mx, const float* mxs, const float* logits, const int* targets,
                                  int N, int TP, int real, int v0, int Vl, int ignore_index) {
  __shared__ float shared[32];
  const int i = blockIdx.x, target = targets[i];
  const bool ignored = target == ignore_index;
  const float* row = logits + (size_t)i * Vl;
  float m = -INFINITY;
  for (int r = 0; r < TP; r++) m = fmaxf(m, mxs[(size_t)r * N + i]);
  float s = 0.0f;
  if (!ignored)
    for (int c = threadIdx.x; c < real; c += blockDim.x) s += expf(row[c] - m);
  s = block_sum(s, shared);
  if (threadIdx.x == 0) {
    const int t = target - v0;
    mx[i] = m;
    sums[i] = s;
    sums[(size_t)N + i] = !ignored && t >= 0 && t < Vl ? row[t] : 0.0f;
  }
}

__global__ void shard_finish_kernel(float* logits, float* losses, const float* mx, const float* sums,
                                    const int* targets, int N, int real, int v0, int Vl, float dloss,
                                    int ignore_index) {
  const int i = blockIdx.x, target = targets[i];
  float* row = logits + (size_t)i * Vl;
  if (target == ignore_index) {
    if (threadIdx.x == 0) losses[i] = 0.0f;
    if (dloss != 0.0f) write_dlogits(row, 0, Vl, 0.0f, -1, dloss);
    return;
  }
  const float shift = mx[i] + logf(sums[i]);
  if (threadIdx.x == 0) losses[i] = shift - sums[(size_t)N + i];
  if (dloss != 0.0f) write_dlogits(row, real, Vl, shift, target - v0, dloss);
}

}  // namespace

void crossentropy_forward_backward(float* logits, float* losses, const int* targets, int N, int V, int Vp,
                                   float dloss, int ignore_index) {
  // logits (N,Vp): in logits, out dlogits when dloss != 0; losses (N); targets (N); device
  if (N == 0) return;
  launch(crossentropy_kernel, N, kRowThreads, 0, logits, losses, targets, V, Vp, dloss, ignore_index);
}

void crossentropy_shard_max(float* mx, const float* logits, int N, int V, int v0, int Vl) {
  // mx (N) out; logits (N,Vl); device
  if (N == 0) return;
  const int real = vocab_shard_real_columns(V, v0, Vl);
  launch(shard_max_kernel, N, kRowThreads, 0, mx, logits, real, Vl);
}

void crossentropy_shard_sums(float* sums, float* mx, const float* mxs, const float* logits, const int* targets,
                             int N, int TP, int V, int v0, int Vl, int ignore_index) {
  // sums (2,N) out: sums of exps, then target logits; mx (N) out: the global row max; mxs (TP,N);
  // logits (N,Vl); targets (N); device
  if (N == 0) return;
  const int real = vocab_shard_real_columns(V, v0, Vl);
  launch(shard_sums_kernel, N, kRowThreads, 0, sums, mx, mxs, logits, targets, N, TP, real, v0, Vl, ignore_index);
}

void crossentropy_shard_finish(float* logits, float* losses, const float* mx, const float* sums, const int* targets,
                               int N, int V, int v0, int Vl, float dloss, int ignore_index) {
  // logits (N,Vl): in logits, out dlogits when dloss != 0; losses (N) out; mx (N), sums (2,N);
  // targets (N); device
  if (N == 0) return;
  const int real = vocab_shard_real_columns(V, v0, Vl);
  launch(shard_finish_kernel, N, kRowThreads, 0, logits, losses, mx, sums, targets, N, real, v0, Vl, dloss,
         ignore_index);
}

}  // namespace kernels::cuda
