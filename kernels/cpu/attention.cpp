// Causal multi-head self-attention, FlashAttention-2 style on the CPU: each (batch, head) is one
// OpenMP task that walks tiles of kBlock queries x kBlock keys. A tile's scores live in a
// kBlock x kBlock scratch (64 KiB, in L2) and the T x T matrix never exists, so memory stays
// O(T) per head at any context length. Query t's keys start at attention_first_key (full, sliding
// or block sliding window); key tiles before a query tile's first key are skipped. The forward
// keeps an online softmax (running max m and sum l per query) and saves lse = m + log(l); the
// backward recomputes each tile's probabilities as exp(S - lse) and pushes the tile's gradients
// straight into dqkv with serial_gemm.
// attention_decode answers one query per sequence from a ring cache of keys and values: a plain
// max-subtracted softmax over its visible keys, fp32 throughout.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/serial_gemm.h"
#include "kernels/cpu/vecmath.h"
#include "kernels/kernels.h"

namespace kernels::cpu {

namespace {

// Tile edge. GPT-2 124M at T 256, 2 threads: 64 and 128 tie, 256 is ~20% slower (the masked
// half of each diagonal tile costs more than bigger products save).
constexpr int kBlock = 128;


// One (batch, head)'s slice of qkv: q, k and v rows ld floats apart.
struct Head {
  int hs, window, block;
  float scale;
  const float *q, *k, *v;  // (T,hs), row stride ld
  int ld;                  // 3C
};

// The first key that some query of the tile starting at i0 can see.
int first_key(const Head& hd, int i0) { return attention_first_key(i0, hd.window, hd.block); }

// The columns [lo, hi) of a key tile (keys j0.. j0+bk-1) that query t sees; lo == hi when none.
struct Visible {
  int lo, hi;
};
Visible visible_keys(const Head& hd, int t, int j0, int bk) {
  const int lo = std::clamp(attention_first_key(t, hd.window, hd.block) - j0, 0, bk);
  return {lo, std::clamp(t - j0 + 1, lo, bk)};
}

// S (bq,bk), row stride kBlock: scale * q[i0..] k[j0..]^T for every pair. The masked ones are
// never read: each row's softmax reads only its visible_keys and writes zeros around them.
void tile_scores(float* S, const Head& hd, int i0, int bq, int j0, int bk) {
  serial_gemm(false, true, bq, bk, hd.hs, hd.scale, hd.q + (size_t)i0 * hd.ld, hd.ld,
              hd.k + (size_t)j0 * hd.ld, hd.ld, 0.0f, S, kBlock);
}

// The visible range widened to whole 16-float vectors, within the kBlock-wide scratch row: a
// loop over it has no scalar remainder (which cost as much as the vectors at T = 64's short rows),
// and a select keeps the columns outside [lo, hi) out of the result.
struct Span {
  int lo, hi;
};
constexpr int kVec = 16;
Span vector_span(Visible v) { return {v.lo / kVec * kVec, std::min(kBlock, (v.hi + kVec - 1) / kVec * kVec)}; }

// max of row[lo, hi); -inf when the range is empty
float max_visible(const float* row, Visible v) {
  const Span s = vector_span(v);
  float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
  for (int c = s.lo; c < s.hi; c++) {
    const bool seen = c >= v.lo && c < v.hi;
    mx = seen && row[c] > mx ? row[c] : mx;  // std::max does not vectorise here
  }
  return mx;
}

// row[lo, hi) = exp(row - shift), zeros elsewhere in [0, bk); returns the sum of the exps.
float exp_visible(float* row, Visible v, int bk, float shift) {
  const Span s = vector_span(v);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int c = s.lo; c < s.hi; c++) {
    const float e = vexp(row[c] - shift);
    row[c] = c >= v.lo && c < v.hi ? e : 0.0f;
    sum += row[c];
  }
  std::fill(row, row + s.lo, 0.0f);
  if (s.hi < bk) std::fill(row + s.hi, row + bk, 0.0f);
  return sum;
}

Head head_view(const float* qkv, int b, int h, int T, int C, int NH, int window, int block) {
  int hs = C / NH;
  const float* base = qkv + (size_t)b * T * 3 * C + h * hs;
  return {hs, window, block, 1.0f / std::sqrt((float)hs), base, base + C, base + 2 * C, 3 * C};
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH, int window,
                       int block) {
  // out (B,T,C), lse (B,NH,T), qkv (B,T,3C)
  attention_check_window(window, block);
  int hs = C / NH;
#pragma omp parallel
  {
    std::vector<float> S(kBlock * kBlock);  // (kBlock,kBlock) scores, then probabilities
    std::vector<float> O(kBlock * hs);      // (kBlock,hs) unnormalised output of the query tile
    float m[kBlock], l[kBlock];             // running max and sum of exp per query
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
      for (int h = 0; h < NH; h++) {
        Head hd = head_view(qkv, b, h, T, C, NH, window, block);
        float* o_bh = out + (size_t)b * T * C + h * hs;      // (T,hs), row stride C
        float* lse_bh = lse + ((size_t)b * NH + h) * T;       // (T)
        for (int i0 = 0; i0 < T; i0 += kBlock) {
          int bq = std::min(kBlock, T - i0);
          std::fill(m, m + bq, -INFINITY);
          std::fill(l, l + bq, 0.0f);
          for (int j0 = first_key(hd, i0); j0 < i0 + bq; j0 += kBlock) {
            int bk = std::min(kBlock, i0 + bq - j0);
            // the first key tile sets O and the softmax state outright: nothing to rescale, and
            // at T <= kBlock it is the only tile
            const bool first = j0 == first_key(hd, i0);
            tile_scores(S.data(), hd, i0, bq, j0, bk);
            for (int r = 0; r < bq; r++) {
              float* srow = S.data() + r * kBlock;
              const Visible v = visible_keys(hd, i0 + r, j0, bk);
              if (v.hi == v.lo) {  // this query sees none of these keys (window edge)
                std::fill(srow, srow + bk, 0.0f);
                continue;
              }
              float mnew = std::max(m[r], max_visible(srow, v));
              float sum = exp_visible(srow, v, bk, mnew);
              if (first) {
                l[r] = sum;
                m[r] = mnew;
                continue;
              }
              float alpha = vexp(m[r] - mnew);  // rescales what earlier key tiles contributed
              l[r] = l[r] * alpha + sum;
              m[r] = mnew;
              float* orow = O.data() + r * hs;
#pragma omp simd
              for (int d = 0; d < hs; d++) orow[d] *= alpha;
            }
            // O (+)= P @ V
            serial_gemm(false, false, bq, hs, bk, 1.0f, S.data(), kBlock,
                        hd.v + (size_t)j0 * hd.ld, hd.ld, first ? 0.0f : 1.0f, O.data(), hs);
          }
          for (int r = 0; r < bq; r++) {
            float inv = 1.0f / l[r];
            float* dst = o_bh + (size_t)(i0 + r) * C;
#pragma omp simd
            for (int d = 0; d < hs; d++) dst[d] = O[r * hs + d] * inv;
            lse_bh[i0 + r] = m[r] + std::log(l[r]);
          }
        }
      }
    }
  }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out, const float* lse,
                        int B, int T, int C, int NH, int window, int block) {
  // dqkv (B,T,3C) accumulated; dout, out (B,T,C); qkv (B,T,3C); lse (B,NH,T)
  attention_check_window(window, block);
  int hs = C / NH;
#pragma omp parallel
  {
    std::vector<float> P(kBlock * kBlock);   // (kBlock,kBlock) probabilities of the tile
    std::vector<float> dS(kBlock * kBlock);  // (kBlock,kBlock) dP, then dS in place
    std::vector<float> D(T);                 // (T) rowsum(dout * out) = sum_j P_ij dP_ij
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
      for (int h = 0; h < NH; h++) {
        Head hd = head_view(qkv, b, h, T, C, NH, window, block);
        size_t off = (size_t)b * T * C + h * hs;
        const float* do_bh = dout + off;  // (T,hs), row stride C
        const float* o_bh = out + off;    // (T,hs), row stride C
        const float* lse_bh = lse + ((size_t)b * NH + h) * T;
        float* dq = dqkv + (size_t)b * T * 3 * C + h * hs;  // (T,hs), row stride 3C
        float* dk = dq + C;
        float* dv = dq + 2 * C;
        for (int t = 0; t < T; t++) {
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (int d = 0; d < hs; d++) acc += do_bh[(size_t)t * C + d] * o_bh[(size_t)t * C + d];
          D[t] = acc;
        }
        for (int i0 = 0; i0 < T; i0 += kBlock) {
          int bq = std::min(kBlock, T - i0);
          const float* dO = do_bh + (size_t)i0 * C;
          for (int j0 = first_key(hd, i0); j0 < i0 + bq; j0 += kBlock) {
            int bk = std::min(kBlock, i0 + bq - j0);
            tile_scores(P.data(), hd, i0, bq, j0, bk);
            for (int r = 0; r < bq; r++) {
              exp_visible(P.data() + r * kBlock, visible_keys(hd, i0 + r, j0, bk), bk, lse_bh[i0 + r]);
            }
            const float* K = hd.k + (size_t)j0 * hd.ld;
            const float* V = hd.v + (size_t)j0 * hd.ld;
            const float* Q = hd.q + (size_t)i0 * hd.ld;
            // dV += P^T dO
            serial_gemm(true, false, bk, hs, bq, 1.0f, P.data(), kBlock, dO, C, 1.0f,
                        dv + (size_t)j0 * hd.ld, hd.ld);
            // dP = dO V^T, then dS = P * (dP - D)
            serial_gemm(false, true, bq, bk, hs, 1.0f, dO, C, V, hd.ld, 0.0f,
                        dS.data(), kBlock);
            for (int r = 0; r < bq; r++) {
              float* srow = dS.data() + r * kBlock;
              const float* prow = P.data() + r * kBlock;
              float Di = D[i0 + r];
#pragma omp simd
              for (int c = 0; c < bk; c++) srow[c] = prow[c] * (srow[c] - Di);
            }
            // dQ += scale dS K, dK += scale dS^T Q
            serial_gemm(false, false, bq, hs, bk, hd.scale, dS.data(), kBlock, K,
                        hd.ld, 1.0f, dq + (size_t)i0 * hd.ld, hd.ld);
            serial_gemm(true, false, bk, hs, bq, hd.scale, dS.data(), kBlock, Q,
                        hd.ld, 1.0f, dk + (size_t)j0 * hd.ld, hd.ld);
          }
        }
      }
    }
  }
}

void attention_decode(float* out, float* k_cache, float* v_cache, const float* qkv, int B, int C, int NH, int pos,
                      int cap, int window, int block) {
  // out (B,C); k_cache, v_cache (B,cap,C), slot pos % cap written; qkv (B,3C)
  const int first = attention_decode_first_key(C, NH, pos, cap, window, block), hs = C / NH;
  const float scale = 1.0f / std::sqrt((float)hs);
  const size_t slot = (size_t)(pos % cap) * C;
#pragma omp parallel
  {
    std::vector<float> att(pos - first + 1);  // scores, then probabilities, of keys [first, pos]
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
      for (int h = 0; h < NH; h++) {
        const float* q = qkv + (size_t)b * 3 * C + h * hs;  // (hs); k and v follow at +C, +2C
        float* kc = k_cache + (size_t)b * cap * C + h * hs;  // (cap,hs), row stride C
        float* vc = v_cache + (size_t)b * cap * C + h * hs;
        std::copy_n(q + C, hs, kc + slot);
        std::copy_n(q + 2 * C, hs, vc + slot);
        float mx = -INFINITY;
        for (int j = first; j <= pos; j++) {
          const float* k = kc + (size_t)(j % cap) * C;
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int d = 0; d < hs; d++) dot += q[d] * k[d];
          att[j - first] = scale * dot;
          mx = std::max(mx, att[j - first]);
        }
        float sum = 0.0f;
        for (float& a : att) sum += a = std::exp(a - mx);
        float* o = out + (size_t)b * C + h * hs;
        std::fill(o, o + hs, 0.0f);
        for (int j = first; j <= pos; j++) {
          const float p = att[j - first] / sum;
          const float* v = vc + (size_t)(j % cap) * C;
#pragma omp simd
          for (int d = 0; d < hs; d++) o[d] += p * v[d];
        }
      }
    }
  }
}

}  // namespace kernels::cpu
