// Softmax and cross-entropy fused over the padded vocabulary: the logits are the largest tensor of
// a GPT-2 step (Vp = 50304 per token), so each row is streamed from memory once for its max and
// normaliser and written once with its gradient, and the probabilities never reach memory.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/vecmath.h"
#include "kernels/kernels.h"

namespace kernels::cpu {

void crossentropy_forward_backward(float* logits, float* losses, const int* targets, int N, int V, int Vp,
                                   float dloss, int ignore_index) {
  // logits (N,Vp): in logits, out dlogits when dloss != 0; losses (N); targets (N)
  // The online softmax works in L1-sized chunks: the chunk's max rescales the running sum, then
  // the chunk's exps add to it, both while the chunk is still in cache.
  constexpr int kChunk = 512;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; i++) {
    float* row = logits + (size_t)i * Vp;
    int target = targets[i];
    if (target == ignore_index) {
      losses[i] = 0.0f;
      if (dloss != 0.0f) std::fill(row, row + Vp, 0.0f);
      continue;
    }
    float mx = -INFINITY, sum = 0.0f;
    for (int c0 = 0; c0 < V; c0 += kChunk) {
      int c1 = std::min(V, c0 + kChunk);
      float cmx = -INFINITY;
#pragma omp simd reduction(max : cmx)
      for (int c = c0; c < c1; c++) cmx = row[c] > cmx ? row[c] : cmx;  // std::max does not vectorise here
      if (cmx > mx) {
        sum *= vexp(mx - cmx);
        mx = cmx;
      }
      float csum = 0.0f;
#pragma omp simd reduction(+ : csum)
      for (int c = c0; c < c1; c++) csum += vexp(row[c] - mx);
      sum += csum;
    }
    float log_sum = std::log(sum);
    losses[i] = mx + log_sum - row[target];
    if (dloss == 0.0f) continue;
    // dloss * (softmax - onehot); the row is still in L2 (200 KiB at Vp = 50304)
    float shift = mx + log_sum;
#pragma omp simd
    for (int c = 0; c < V; c++) row[c] = dloss * vexp(row[c] - shift);
    row[target] -= dloss;
    std::fill(row + V, row + Vp, 0.0f);
  }
}

}  // namespace kernels::cpu
