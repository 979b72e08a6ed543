// Softmax and cross-entropy fused over the padded vocabulary: the logits are the largest tensor of
// a GPT-2 step (Vp = 50304 per token), so each row is streamed from memory once for its max and
// normaliser and written once with its gradient, and the probabilities never reach memory.
// Below it, the vocabulary-parallel cross-entropy's three phases (kernels.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/vecmath.h"
#include "kernels/kernels.h"

namespace kernels::cpu {

void crossentropy_forward_backward(float* logits, float* losses, const int* targets, int N, int V, int Vp,
                                   float dloss, int ignore_index) {
  // logits (N,Vp): in logits, out dlogits when dloss != 0; losses (N); targets (N)
  // The online softmax works in L1-sized chunks: the chunk's max rescales the running sum, then
  // the chunk's exps add to it, both while the chunk is still in cache. With a gradient to write,
  // the exps stay in the row (relative to the running max of their chunk), and the gradient pass
  // scales each chunk by one factor instead of taking every exp again.
  constexpr int kChunk = 512;
  const bool backward = dloss != 0.0f;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; i++) {
    float* row = logits + (size_t)i * Vp;
    int target = targets[i];
    if (target == ignore_index) {
      losses[i] = 0.0f;
      if (backward) std::fill(row, row + Vp, 0.0f);
      continue;
    }
    const float target_logit = row[target];
    thread_local std::vector<float> chunk_max;  // the max each chunk's exps are relative to
    chunk_max.resize((size_t)(V + kChunk - 1) / kChunk);
    float mx = -INFINITY, sum = 0.0f;
    for (int c0 = 0, k = 0; c0 < V; c0 += kChunk, k++) {
      int c1 = std::min(V, c0 + kChunk);
      float cmx = -INFINITY;
#pragma omp simd reduction(max : cmx)
      for (int c = c0; c < c1; c++) cmx = row[c] > cmx ? row[c] : cmx;  // std::max does not vectorise here
      if (cmx > mx) {
        sum *= vexp(mx - cmx);
        mx = cmx;
      }
      chunk_max[k] = mx;
      float csum = 0.0f;
      if (backward) {
#pragma omp simd reduction(+ : csum)
        for (int c = c0; c < c1; c++) {
          row[c] = vexp(row[c] - mx);
          csum += row[c];
        }
      } else {
#pragma omp simd reduction(+ : csum)
        for (int c = c0; c < c1; c++) csum += vexp(row[c] - mx);
      }
      sum += csum;
    }
    float log_sum = std::log(sum);
    losses[i] = mx + log_sum - target_logit;
    if (!backward) continue;
    // dloss * (softmax - onehot); the row is still in L2 (200 KiB at Vp = 50304)
    float shift = mx + log_sum;
    for (int c0 = 0, k = 0; c0 < V; c0 += kChunk, k++) {
      const int c1 = std::min(V, c0 + kChunk);
      const float scale = dloss * vexp(chunk_max[k] - shift);
#pragma omp simd
      for (int c = c0; c < c1; c++) row[c] *= scale;
    }
    row[target] -= dloss;
    std::fill(row + V, row + Vp, 0.0f);
  }
}

// The shard phases walk a row's columns in order with the scalar std::exp (a row per thread): the
// float operations, in the order, of the host loops in the model that they replaced, so the
// tensor-parallel losses and gradients stayed as they were.

void crossentropy_shard_max(float* mx, const float* logits, int N, int V, int v0, int Vl) {
  // mx (N) out; logits (N,Vl)
  const int real = vocab_shard_real_columns(V, v0, Vl);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; i++) {
    const float* row = logits + (size_t)i * Vl;
    float m = -INFINITY;
    for (int c = 0; c < real; c++) m = row[c] > m ? row[c] : m;
    mx[i] = m;
  }
}

void crossentropy_shard_sums(float* sums, float* mx, const float* mxs, const float* logits, const int* targets,
                             int N, int TP, int V, int v0, int Vl, int ignore_index) {
  // sums (2,N) out: sums of exps, then target logits; mx (N) out: the global row max; mxs (TP,N): every
  // shard's row max; logits (N,Vl); targets (N)
  const int real = vocab_shard_real_columns(V, v0, Vl);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; i++) {
    float m = -INFINITY;
    for (int r = 0; r < TP; r++) m = std::max(m, mxs[(size_t)r * N + i]);
    mx[i] = m;
    sums[i] = sums[(size_t)N + i] = 0.0f;
    if (targets[i] == ignore_index) continue;
    const float* row = logits + (size_t)i * Vl;
    float sum = 0.0f;
    for (int c = 0; c < real; c++) sum += std::exp(row[c] - m);
    sums[i] = sum;
    const int t = targets[i] - v0;
    if (t >= 0 && t < Vl) sums[(size_t)N + i] = row[t];
  }
}

void crossentropy_shard_finish(float* logits, float* losses, const float* mx, const float* sums, const int* targets,
                               int N, int V, int v0, int Vl, float dloss, int ignore_index) {
  // logits (N,Vl): in logits, out dlogits when dloss != 0; losses (N) out; mx (N), sums (2,N): the
  // all-reduced phase 2; targets (N)
  const int real = vocab_shard_real_columns(V, v0, Vl);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; i++) {
    float* row = logits + (size_t)i * Vl;
    if (targets[i] == ignore_index) {
      losses[i] = 0.0f;
      if (dloss != 0.0f) std::fill(row, row + Vl, 0.0f);
      continue;
    }
    const float shift = mx[i] + std::log(sums[i]);
    losses[i] = shift - sums[(size_t)N + i];
    if (dloss == 0.0f) continue;
    for (int c = 0; c < real; c++) row[c] = dloss * std::exp(row[c] - shift);
    std::fill(row + real, row + Vl, 0.0f);
    const int t = targets[i] - v0;
    if (t >= 0 && t < Vl) row[t] -= dloss;
  }
}

}  // namespace kernels::cpu
