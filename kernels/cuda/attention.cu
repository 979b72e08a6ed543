// Causal multi-head attention with an optional (block) sliding window, the CUDA twin of
// kernels/cpu/attention.cpp. Correctness first, not speed: one warp per row, lanes splitting the
// head's hs dims (d = lane + 32 r, hs <= 32 * kMaxRegs), each score a warp-reduced dot product.
// Nothing T x T is ever stored.
//  - forward: a warp per query keeps an online softmax (running max m, sum l) over its visible keys
//    and saves lse = m + log(l);
//  - backward, deterministic (no atomics): a warp per query accumulates dq over its keys, then a
//    warp per key accumulates dk and dv over the queries that see it; both recompute
//    P = exp(scale q.k - lse) and D_i = dout_i . out_i;
//  - decode: a block per (b, head) over its ring cache, each warp an online softmax over a strided
//    share of the keys, merged in shared memory.
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

constexpr int kMaxRegs = 8;  // hs <= 256
constexpr int kWarpsPerBlock = kThreads / 32;

struct Geometry {
  int T, C, NH, hs, window, block;
  float scale;
};

// dot of two rows held one element per (lane, r)
__device__ inline float warp_dot(const float (&a)[kMaxRegs], const float (&b)[kMaxRegs]) {
  float acc = 0.0f;
#pragma unroll
  for (int r = 0; r < kMaxRegs; r++) acc += a[r] * b[r];
  return warp_sum(acc);
}

__device__ inline void load_row(float (&dst)[kMaxRegs], const float* src, int hs, int lane) {
#pragma unroll
  for (int r = 0; r < kMaxRegs; r++) {
    int d = lane + 32 * r;
    dst[r] = d < hs ? src[d] : 0.0f;
  }
}

// One key of an online softmax: the running max m, sum l and unnormalised output o take in the
// key's score and value row.
__device__ inline void online_softmax_add(float& m, float& l, float (&o)[kMaxRegs], float score,
                                          const float (&v)[kMaxRegs]) {
  float mnew = fmaxf(m, score);
  float alpha = expf(m - mnew);  // 0 on the first key (m = -inf)
  float p = expf(score - mnew);
  l = l * alpha + p;
  m = mnew;
#pragma unroll
  for (int r = 0; r < kMaxRegs; r++) o[r] = o[r] * alpha + p * v[r];
}

// Row (b,h,t) -> pointers into qkv (row stride 3C) and out/dout (row stride C).
__device__ inline size_t qkv_off(const Geometry& g, int b, int h, int t) {
  return ((size_t)b * g.T + t) * 3 * g.C + (size_t)h * g.hs;
}
__device__ inline size_t out_off(const Geometry& g, int b, int h, int t) {
  return ((size_t)b * g.T + t) * g.C + (size_t)h * g.hs;
}

__global__ void attention_forward_kernel(float* out, float* lse, const float* qkv, int B, Geometry g) {
  size_t row = (size_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;  // (b, h, t)
  int lane = threadIdx.x % 32;
  if (row >= (size_t)B * g.NH * g.T) return;
  int t = (int)(row % g.T);
  int h = (int)((row / g.T) % g.NH);
  int b = (int)(row / ((size_t)g.T * g.NH));
  float q[kMaxRegs], k[kMaxRegs], v[kMaxRegs], o[kMaxRegs];
  load_row(q, qkv + qkv_off(g, b, h, t), g.hs, lane);
#pragma unroll
  for (int r = 0; r < kMaxRegs; r++) o[r] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int s = attention_first_key(t, g.window, g.block); s <= t; s++) {
    const float* kv = qkv + qkv_off(g, b, h, s);
    load_row(k, kv + g.C, g.hs, lane);
    load_row(v, kv + 2 * g.C, g.hs, lane);
    online_softmax_add(m, l, o, g.scale * warp_dot(q, k), v);
  }
  float inv = 1.0f / l;
  float* dst = out + out_off(g, b, h, t);
#pragma unroll
  for (int r = 0; r < kMaxRegs; r++) {
    int d = lane + 32 * r;
    if (d < g.hs) dst[d] = o[r] * inv;
  }
  if (lane == 0) lse[row] = m + logf(l);
}

// dq_i += scale * sum_j P_ij (dout_i . v_j - D_i) k_j; a warp per query
__global__ void attention_backward_dq_kernel(float* dqkv, const float* dout, const float* qkv, const float* out,
                                             const float* lse, int B, Geometry g) {
  size_t row = (size_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (row >= (size_t)B * g.NH * g.T) return;
  int t = (int)(row % g.T);
  int h = (int)((row / g.T) % g.NH);
  int b = (int)(row / ((size_t)g.T * g.NH));
  float q[kMaxRegs], k[kMaxRegs], v[kMaxRegs], dO[kMaxRegs], tmp[kMaxRegs], dq[kMaxRegs];
  load_row(q, qkv + qkv_off(g, b, h, t), g.hs, lane);
  load_row(dO, dout + out_off(g, b, h, t), g.hs, lane);
  load_row(tmp, out + out_off(g, b, h, t), g.hs, lane);
  float D = warp_dot(dO, tmp);
  float L = lse[row];
#pragma unroll
  for (int r = 0; r < kMaxRegs; r++) dq[r] = 0.0f;
  for (int s = attention_first_key(t, g.window, g.block); s <= t; s++) {
    const float* kv = qkv + qkv_off(g, b, h, s);
    load_row(k, kv + g.C, g.hs, lane);
    load_row(v, kv + 2 * g.C, g.hs, lane);
    float p = expf(g.scale * warp_dot(q, k) - L);
    float ds = p * (warp_dot(dO, v) - D);
#pragma unroll
    for (int r = 0; r < kMaxRegs; r++) dq[r] += ds * k[r];
  }
  float* dst = dqkv + qkv_off(g, b, h, t);
#pragma unroll
  for (int r = 0; r < kMaxRegs; r++) {
    int d = lane + 32 * r;
    if (d < g.hs) dst[d] += g.scale * dq[r];
  }
}

// The last query that sees key j: the queries that do are [j, last_query] (attention_first_key
// is nondecreasing); under a block window, the queries of the window/block chunks from j's own on.
__device__ inline int last_query(const Geometry& g, int j) {
  if (g.window == 0) return g.T - 1;
  const int last = g.block == 0 ? j + g.window - 1 : (j + g.window) / g.block * g.block - 1;
  return min(g.T - 1, last);
}

// dk_j += scale * sum_i dS_ij q_i, dv_j += sum_i P_ij dout_i over the queries i that see key j;
// a warp per key
__global__ void attention_backward_dkv_kernel(float* dqkv, const float* dout, const float* qkv, const float* out,
                                              const float* lse, int B, Geometry g) {
  size_t row = (size_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (row >= (size_t)B * g.NH * g.T) return;
  int j = (int)(row % g.T);
  int h = (int)((row / g.T) % g.NH);
  int b = (int)(row / ((size_t)g.T * g.NH));
  const float* lse_bh = lse + ((size_t)b * g.NH + h) * g.T;
  float q[kMaxRegs], k[kMaxRegs], v[kMaxRegs], dO[kMaxRegs], tmp[kMaxRegs], dk[kMaxRegs], dv[kMaxRegs];
  const float* kv = qkv + qkv_off(g, b, h, j);
  load_row(k, kv + g.C, g.hs, lane);
  load_row(v, kv + 2 * g.C, g.hs, lane);
#pragma unroll
  for (int r = 0; r < kMaxRegs; r++) dk[r] = dv[r] = 0.0f;
  for (int i = j, last = last_query(g, j); i <= last; i++) {
    load_row(q, qkv + qkv_off(g, b, h, i), g.hs, lane);
    load_row(dO, dout + out_off(g, b, h, i), g.hs, lane);
    load_row(tmp, out + out_off(g, b, h, i), g.hs, lane);
    float D = warp_dot(dO, tmp);
    float p = expf(g.scale * warp_dot(q, k) - lse_bh[i]);
    float ds = p * (warp_dot(dO, v) - D);
#pragma unroll
    for (int r = 0; r < kMaxRegs; r++) {
      dv[r] += p * dO[r];
      dk[r] += ds * q[r];
    }
  }
  float* dst = dqkv + qkv_off(g, b, h, j);
#pragma unroll
  for (int r = 0; r < kMaxRegs; r++) {
    int d = lane + 32 * r;
    if (d < g.hs) {
      dst[g.C + d] += g.scale * dk[r];
      dst[2 * g.C + d] += dv[r];
    }
  }
}

// One block per (b, head) of attention_decode: the block writes the token's k and v into slot
// pos % cap, then warp w keeps an online softmax over keys first+w, first+w+kWarpsPerBlock, ...;
// the warps' (m, l, o) meet in shared memory and merge in warp order (deterministic).
__global__ void attention_decode_kernel(float* out, float* k_cache, float* v_cache, const float* qkv, Geometry g,
                                        int pos, int cap, int first) {
  int b = blockIdx.x / g.NH, h = blockIdx.x % g.NH;
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* qrow = qkv + (size_t)b * 3 * g.C + (size_t)h * g.hs;  // q; k and v at +C, +2C
  float* kc = k_cache + (size_t)b * cap * g.C + (size_t)h * g.hs;   // (cap,hs), row stride C
  float* vc = v_cache + (size_t)b * cap * g.C + (size_t)h * g.hs;
  size_t slot = (size_t)(pos % cap) * g.C;
  for (int d = threadIdx.x; d < g.hs; d += blockDim.x) {
    kc[slot + d] = qrow[g.C + d];
    vc[slot + d] = qrow[2 * g.C + d];
  }
  __syncthreads();  // the new key is read back by another warp
  float q[kMaxRegs], k[kMaxRegs], v[kMaxRegs], o[kMaxRegs];
  load_row(q, qrow, g.hs, lane);
#pragma unroll
  for (int r = 0; r < kMaxRegs; r++) o[r] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int j = first + warp; j <= pos; j += kWarpsPerBlock) {
    load_row(k, kc + (size_t)(j % cap) * g.C, g.hs, lane);
    load_row(v, vc + (size_t)(j % cap) * g.C, g.hs, lane);
    online_softmax_add(m, l, o, g.scale * warp_dot(q, k), v);
  }
  __shared__ float wm[kWarpsPerBlock], wl[kWarpsPerBlock], wo[kWarpsPerBlock][32 * kMaxRegs];
  if (lane == 0) wm[warp] = m, wl[warp] = l;
#pragma unroll
  for (int r = 0; r < kMaxRegs; r++) wo[warp][lane + 32 * r] = o[r];
  __syncthreads();
  float mx = -INFINITY, sum = 0.0f;  // a warp without keys has m = -inf, l = 0, o = 0
  for (int w = 0; w < kWarpsPerBlock; w++) mx = fmaxf(mx, wm[w]);
  for (int w = 0; w < kWarpsPerBlock; w++) sum += wl[w] * expf(wm[w] - mx);
  for (int d = threadIdx.x; d < g.hs; d += blockDim.x) {
    float acc = 0.0f;
    for (int w = 0; w < kWarpsPerBlock; w++) acc += wo[w][d] * expf(wm[w] - mx);
    out[(size_t)b * g.C + (size_t)h * g.hs + d] = acc / sum;
  }
}

Geometry geometry(int T, int C, int NH, int window, int block) {
  attention_check_window(window, block);
  if (NH <= 0 || C % NH != 0) throw std::invalid_argument("attention (cuda): C must be a multiple of NH");
  int hs = C / NH;
  if (hs > 32 * kMaxRegs)
    throw std::invalid_argument("attention (cuda): head size " + std::to_string(hs) + " exceeds the supported " +
                                std::to_string(32 * kMaxRegs));
  return {T, C, NH, hs, window, block, 1.0f / sqrtf((float)hs)};
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH, int window,
                       int block) {
  // out (B,T,C), lse (B,NH,T), qkv (B,T,3C); device
  Geometry g = geometry(T, C, NH, window, block);
  size_t rows = (size_t)B * NH * T;
  if (rows == 0) return;
  launch(attention_forward_kernel, blocks_for(rows, kWarpsPerBlock), kThreads, 0, out, lse, qkv, B, g);
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out, const float* lse, int B,
                        int T, int C, int NH, int window, int block) {
  // dqkv (B,T,3C) accumulated; dout, out (B,T,C); qkv (B,T,3C); lse (B,NH,T); device
  Geometry g = geometry(T, C, NH, window, block);
  size_t rows = (size_t)B * NH * T;
  if (rows == 0) return;
  launch(attention_backward_dq_kernel, blocks_for(rows, kWarpsPerBlock), kThreads, 0, dqkv, dout, qkv, out, lse, B, g);
  launch(attention_backward_dkv_kernel, blocks_for(rows, kWarpsPerBlock), kThreads, 0, dqkv, dout, qkv, out, lse, B, g);
}

void attention_decode(float* out, float* k_cache, float* v_cache, const float* qkv, int B, int C, int NH, int pos,
                      int cap, int window, int block) {
  // out (B,C); k_cache, v_cache (B,cap,C), slot pos % cap written; qkv (B,3C); device
  int first = attention_decode_first_key(C, NH, pos, cap, window, block);
  Geometry g = geometry(1, C, NH, window, block);
  if (B * NH == 0) return;
  launch(attention_decode_kernel, B * NH, kThreads, 0, out, k_cache, v_cache, qkv, g, pos, cap, first);
}

}  // namespace kernels::cuda
