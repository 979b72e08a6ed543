// The KVM states of BH heads on the GPU and everything that changes them (docs/kvm.md sections 4,
// 5, 8): the CUDA twin of kernels/cpu/kvm_state.cpp. Same arithmetic as the CPU where it decides
// or accumulates: ln_s statistics and norms in double, each gated contribution rounded to fp32
// before it is added to the double sums, a slot's merges added in time order. So both backends
// build the same sums from the same routing, and the routing differs only where two scores (cuBLAS
// against the CPU twin's summation order) tie to ~1e-7.
// One warp per (head, token) or (head, slot) row, lanes over D; a block per head where a chunk's
// tokens must see each other (append selection, merge chains).
#include <climits>
#include <stdexcept>

#include "kernels/cuda/kvm_internal.cuh"

namespace kernels::cuda::kvm {

namespace {

constexpr int kWarps = kThreads / 32;  // rows per block of the warp-per-row kernels

// Warp-per-row launch: row (head bh, index i of n) of warp w; false for the tail warps.
struct WarpRow {
  size_t row;
  int bh, i, lane;
};
__device__ inline bool warp_row(WarpRow& r, int BH, int n) {
  r.row = (size_t)blockIdx.x * kWarps + threadIdx.x / 32;
  r.lane = threadIdx.x % 32;
  if (r.row >= (size_t)BH * n) return false;
  r.bh = (int)(r.row / n), r.i = (int)(r.row % n);
  return true;
}
inline unsigned warp_blocks(size_t rows) { return blocks_for(rows, kWarps); }

// ln_s of one row by a warp, as cpu::kvm::ln_rows: statistics in double, dims [0,R) read as 0,
// y = (float)((x - mean) * rstd) * w + b. Returns the statistics rounded to fp32.
template <class X>
__device__ RowStats ln_row(float* y, const X* x, int R, int D, const float* w, const float* b, float eps) {
  int lane = threadIdx.x % 32;
  double s = 0.0;
  for (int d = lane; d < D; d += 32) s += d < R ? 0.0 : (double)x[d];
  double mu = warp_sum(s) / D;
  double sq = 0.0;
  for (int d = lane; d < D; d += 32) {
    double c = (d < R ? 0.0 : (double)x[d]) - mu;
    sq += c * c;
  }
  double rs = 1.0 / sqrt(warp_sum(sq) / D + eps);
  for (int d = lane; d < D; d += 32) y[d] = (float)(((d < R ? 0.0 : (double)x[d]) - mu) * rs) * w[d] + b[d];
  return {(float)mu, (float)rs};
}

__global__ void prepare_keys_kernel(float* kp /*(BH,n,D)*/, float* mean /*(BH,n)*/, float* rstd /*(BH,n)*/, Tokens x,
                                    int BH, int n, int D, const float* w, const float* b, int R, float eps) {
  WarpRow r;
  if (!warp_row(r, BH, n)) return;
  RowStats st = ln_row(kp + r.row * D, x.k + ((size_t)r.bh * x.ld + r.i) * D, R, D, w, b, eps);
  if (r.lane == 0) mean[r.row] = st.mean, rstd[r.row] = st.rstd;
}

// Token i of a chunk founds its slot (cpu found_slot): initial tokens take slots m_first + i (and
// are recorded when the routing exists), appended ones the slot the selection gave them.
__global__ void found_kernel(StateView st, Routing rt, Tokens x, const float* kp /*(BH,n,D)*/, int BH, int n,
                             bool initial, int m_first, int D, Flags f) {
  WarpRow r;
  if (!warp_row(r, BH, n)) return;
  size_t tok = (size_t)r.bh * rt.ld + r.i;
  Kind kd = initial ? kInitial : kAppend;
  int m;
  if (initial) {
    m = m_first + r.i;
    if (rt.kind && r.lane == 0) rt.kind[tok] = kInitial, rt.slot[tok] = m;
  } else {
    if (rt.kind[tok] != kAppend) return;  // the whole warp leaves
    m = rt.slot[tok];
  }
  float gt = x.g[(size_t)r.bh * x.ld + r.i];
  float a = f.gate_key[kd] ? gt : 1.0f, bv = f.gate_value[kd] ? gt : 1.0f;
  size_t off = (size_t)r.bh * st.cap + m;
  const float* kpr = kp + r.row * D;
  const float* vr = x.v + ((size_t)r.bh * x.ld + r.i) * D;
  double sq = 0.0;  // |founding value|^2: the initial chunk keeps |v| even when gated (doc section 7)
  for (int d = r.lane; d < D; d += 32) {
    float sv = bv * vr[d];
    st.s_k[off * D + d] = a * kpr[d];
    st.s_v[off * D + d] = sv;
    sq += initial ? (double)vr[d] * vr[d] : (double)sv * sv;
  }
  sq = warp_sum(sq);
  if (r.lane == 0) st.s_len[off] = f.vlens ? (float)sqrt(sq) : 1.0f;
}

// novelty[row] = max over the M slots of the row's scores (BH,n,M)
__global__ void novelty_kernel(float* novelty /*(BH,n)*/, const float* S, int BH, int n, int M) {
  WarpRow r;
  if (!warp_row(r, BH, n)) return;
  const float* s = S + r.row * M;
  float mx = -INFINITY;
  for (int m = r.lane; m < M; m += 32) mx = fmaxf(mx, s[m]);
  mx = warp_max(mx);
  if (r.lane == 0) novelty[r.row] = mx;
}

// Which tokens append (doc section 8), one block per head: the n_app of smallest novelty, ties to
// the earlier token (the CPU's stable sort, as a rank count), or without novelty the last n_app;
// the others merge. Appended tokens found slots M.. in time order.
__global__ void select_kernel(Routing rt, const float* novelty /*(BH,n) or null*/, int n, int n_app, int M) {
  int bh = blockIdx.x;
  int8_t* kind = rt.kind + (size_t)bh * rt.ld;
  int* slot = rt.slot + (size_t)bh * rt.ld;
  const float* nov = novelty ? novelty + (size_t)bh * n : nullptr;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    bool append = t >= n - n_app;
    if (nov) {
      float x = nov[t];
      int rank = 0;
      for (int u = 0; u < n; u++) rank += nov[u] < x || (nov[u] == x && u < t);
      append = rank < n_app;
    }
    kind[t] = append ? kAppend : kMerge;
  }
  __syncthreads();  // the kinds of the whole chunk, before counting the appends ahead of each
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    if (kind[t] != kAppend) continue;
    int ahead = 0;
    for (int u = 0; u < t; u++) ahead += kind[u] == kAppend;
    slot[t] = M + ahead;
  }
}

// Each merge goes to its best-scoring slot in [sink, Mn) (scores (BH,n,Mn)), the lowest index on
// a tie, as the CPU's strict > scan.
__global__ void route_kernel(Routing rt, const float* S, int BH, int n, int Mn, int sink) {
  WarpRow r;
  if (!warp_row(r, BH, n)) return;
  size_t tok = (size_t)r.bh * rt.ld + r.i;
  if (rt.kind[tok] != kMerge) return;
  const float* s = S + r.row * Mn;
  int first = sink + r.lane, best = INT_MAX;  // a lane without slots loses every comparison
  float bs = -INFINITY;
  if (first < Mn) best = first, bs = s[first];
  for (int m = first + 32; m < Mn; m += 32)
    if (s[m] > bs) bs = s[m], best = m;
  for (int off = 16; off > 0; off >>= 1) {
    float os = __shfl_xor_sync(0xffffffffu, bs, off);
    int ob = __shfl_xor_sync(0xffffffffu, best, off);
    if (os > bs || (os == bs && ob < best)) bs = os, best = ob;
  }
  if (r.lane == 0) rt.slot[tok] = best;
}

// Adds (sign 1) or subtracts (sign -1, the undo) the merged tokens' gated keys kp*a and values
// v*bv to their slots, one block per head. A slot's merges are added in time order, as on the CPU,
// so the double sums round alike: first every merge finds the next merge into its slot and whether
// it is the slot's first; then a thread per (first merge, d) walks that chain.
__global__ void scatter_kernel(StateView st, Routing rt, Tokens x, const float* kp /*(BH,n,D)*/,
                               int* next /*(BH,n)*/, int8_t* lead /*(BH,n)*/, int n, int D, Flags f, float sign) {
  int bh = blockIdx.x;
  const int8_t* kind = rt.kind + (size_t)bh * rt.ld;
  const int* slot = rt.slot + (size_t)bh * rt.ld;
  next += (size_t)bh * n;
  lead += (size_t)bh * n;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    if (kind[t] != kMerge) continue;
    int m = slot[t], after = n;
    bool first = true;
    for (int u = 0; u < t && first; u++) first = !(kind[u] == kMerge && slot[u] == m);
    for (int u = t + 1; u < n && after == n; u++)
      if (kind[u] == kMerge && slot[u] == m) after = u;
    next[t] = after;
    lead[t] = first;
  }
  __syncthreads();  // the chains of the whole chunk
  const float* g = x.g + (size_t)bh * x.ld;
  const float* kph = kp + (size_t)bh * n * D;
  const float* vh = x.v + (size_t)bh * x.ld * D;
  for (size_t i = threadIdx.x; i < (size_t)n * D; i += blockDim.x) {
    int t = (int)(i / D), d = (int)(i % D);
    if (kind[t] != kMerge || !lead[t]) continue;
    size_t off = (size_t)bh * st.cap + slot[t];
    double sk = st.s_k[off * D + d], sv = st.s_v[off * D + d];
    int count = 0;
    for (int u = t; u < n; u = next[u], count++) {
      float a = f.gate_key[kMerge] ? g[u] : 1.0f, bv = f.gate_value[kMerge] ? g[u] : 1.0f;
      sk += __fmul_rn(sign * a, kph[(size_t)u * D + d]);  // the fp32 product the CPU adds
      sv += __fmul_rn(sign * bv, vh[(size_t)u * D + d]);
    }
    st.s_k[off * D + d] = sk;
    st.s_v[off * D + d] = sv;
    if (!f.vlens && d == 0) st.s_len[off] += sign * count;  // the token count
  }
}

// Rows [lo,hi) of the prepared states (cpu prepare_state): ks = ln_s(s_k) with its statistics;
// vs = s_v/|s_v|*s_len (vlens) or s_v/count.
__global__ void prepare_state_kernel(PreparedView ps, StateView st, int BH, int lo, int hi, int D, const float* w,
                                     const float* b, float eps, bool vlens, bool keys_only) {
  WarpRow r;
  if (!warp_row(r, BH, hi - lo)) return;
  size_t off = (size_t)r.bh * st.cap + lo + r.i, poff = (size_t)r.bh * ps.cap + lo + r.i;
  RowStats s = ln_row(ps.ks + poff * D, st.s_k + off * D, 0, D, w, b, eps);
  if (r.lane == 0) ps.mean[poff] = s.mean, ps.rstd[poff] = s.rstd;
  if (keys_only) return;
  const double* sv = st.s_v + off * D;
  double sq = 0.0;
  for (int d = r.lane; d < D; d += 32) sq += sv[d] * sv[d];
  double norm = sqrt(warp_sum(sq));
  double c = vlens ? st.s_len[off] / norm : 1.0 / st.s_len[off];
  for (int d = r.lane; d < D; d += 32) ps.vs[poff * D + d] = (float)(c * sv[d]);
}

// Gradients of ks and vs of slot rows [0,M) back to the sums (cpu state_backward), but dw, db.
__global__ void state_backward_kernel(float* Gk, float* Gv, float* Glen, const float* dks, const float* dvs, int N,
                                      StateView st, PreparedView ps, int BH, int M, int D, const float* w,
                                      bool vlens) {
  WarpRow r;
  if (!warp_row(r, BH, M)) return;
  size_t off = (size_t)r.bh * st.cap + r.i, poff = (size_t)r.bh * ps.cap + r.i, doff = (size_t)r.bh * N + r.i;
  // ln_s: Gk += rstd * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat))
  const double* x = st.s_k + off * D;
  const float* dy = dks + doff * D;
  float mean = ps.mean[poff], rstd = ps.rstd[poff];
  float dmean = 0.0f, dproj = 0.0f;
  for (int d = r.lane; d < D; d += 32) {
    float xhat = (float)(x[d] - mean) * rstd, t = dy[d] * w[d];
    dmean += t;
    dproj += t * xhat;
  }
  dmean = warp_sum(dmean) / D;
  dproj = warp_sum(dproj) / D;
  for (int d = r.lane; d < D; d += 32) {
    float xhat = (float)(x[d] - mean) * rstd;
    Gk[off * D + d] += rstd * (dy[d] * w[d] - dmean - xhat * dproj);
  }
  // the read value
  const double* sv = st.s_v + off * D;
  const float* gv = dvs + doff * D;
  if (vlens) {  // vs = s_v/n * s_len: d s_v = s_len/n (g - u (u.g)), d s_len = u.g, u = s_v/n
    double sq = 0.0, dot = 0.0;
    for (int d = r.lane; d < D; d += 32) sq += sv[d] * sv[d], dot += sv[d] * gv[d];
    double norm = sqrt(warp_sum(sq)), ug = warp_sum(dot) / norm, c = st.s_len[off] / norm;
    for (int d = r.lane; d < D; d += 32) Gv[off * D + d] += (float)(c * (gv[d] - sv[d] / norm * ug));
    if (r.lane == 0) Glen[off] += (float)ug;
  } else {  // the count is a constant
    float c = 1.0f / st.s_len[off];
    for (int d = r.lane; d < D; d += 32) Gv[off * D + d] += c * gv[d];
  }
}

// ln_s's dw, db from the slot rows [0,M) of every head, into part_w, part_b (BH,D); grid (D/32, BH)
__global__ void state_backward_params_kernel(float* part_w, float* part_b, const float* dks, int N, StateView st,
                                             PreparedView ps, int M, int D) {
  int bh = blockIdx.y;
  column_sums<2>({part_w + (size_t)bh * D, part_b + (size_t)bh * D}, M, D, [=](int m, int d, float* acc) {
    size_t poff = (size_t)bh * ps.cap + m;
    float dy = dks[((size_t)bh * N + m) * D + d];
    float xhat = (float)(st.s_k[((size_t)bh * st.cap + m) * D + d] - ps.mean[poff]) * ps.rstd[poff];
    acc[0] += dy * xhat;
    acc[1] += dy;
  });
}

// The state sums' gradients back to the tokens of a chunk (cpu tokens_backward), but dw, db:
// key s_k[m] += a * ln_s([0, k[R:D]]), value s_v[m] += bv * v, founding s_len = |bl * v|.
__global__ void tokens_backward_kernel(TokenGrads dx, const float* Gk, const float* Gv, const float* Glen, int cap,
                                       Routing rt, Tokens x, const float* kp /*(BH,n,D)*/,
                                       const float* kmean /*(BH,n)*/, const float* krstd /*(BH,n)*/, int BH, int n,
                                       int D, const float* w, Flags f) {
  WarpRow r;
  if (!warp_row(r, BH, n)) return;
  size_t tok = (size_t)r.bh * rt.ld + r.i, xt = (size_t)r.bh * x.ld + r.i, dt = (size_t)r.bh * dx.ld + r.i;
  Kind kd = (Kind)rt.kind[tok];
  if (kd == kWindow) return;  // never entered the state
  size_t off = (size_t)r.bh * cap + rt.slot[tok];
  const float *gk = Gk + off * D, *gv = Gv + off * D;
  const float *kr = x.k + xt * D, *vr = x.v + xt * D, *kpr = kp + r.row * D;
  float gt = x.g[xt], mean = kmean[r.row], rstd = krstd[r.row];
  bool ga = f.gate_key[kd], gb = f.gate_value[kd];
  float a = ga ? gt : 1.0f, bv = gb ? gt : 1.0f;
  // key: ln_s backward of d kp = a * Gk; the RoPE dims were zeroed, so they get nothing
  float dmean = 0.0f, dproj = 0.0f;
  double dot_k = 0.0, dot_v = 0.0, sq_v = 0.0;
  for (int d = r.lane; d < D; d += 32) {
    float xhat = ((d < f.R ? 0.0f : kr[d]) - mean) * rstd, t = a * gk[d] * w[d];
    dmean += t;
    dproj += t * xhat;
    dot_k += (double)gk[d] * kpr[d];
    dot_v += (double)gv[d] * vr[d];
    sq_v += (double)vr[d] * vr[d];
  }
  dmean = warp_sum(dmean) / D;
  dproj = warp_sum(dproj) / D;
  dot_k = warp_sum(dot_k), dot_v = warp_sum(dot_v), sq_v = warp_sum(sq_v);
  for (int d = r.lane; d < D; d += 32) {
    if (d < f.R) continue;
    float xhat = (kr[d] - mean) * rstd;
    dx.dk[dt * D + d] += rstd * (a * gk[d] * w[d] - dmean - xhat * dproj);
  }
  // value, and the founding value's norm (the initial chunk: |v| even when gated)
  bool founds = f.vlens && kd != kMerge, gl = kd == kAppend && gb;
  float nv = (float)sqrt(sq_v);
  float c = founds ? Glen[off] * (gl ? gt : 1.0f) / nv : 0.0f;
  for (int d = r.lane; d < D; d += 32) {
    float& o = dx.dv[dt * D + d];
    o += bv * gv[d];
    if (founds) o += c * vr[d];
  }
  if (r.lane == 0) {
    float dg = dx.dg[dt];
    if (ga) dg = (float)(dg + dot_k);
    if (gb) dg = (float)(dg + dot_v);
    if (founds && gl) dg += Glen[off] * nv;
    dx.dg[dt] = dg;
  }
}

// ln_s's dw, db from the tokens of a chunk, into part_w, part_b (BH,D); grid (D/32, BH)
__global__ void tokens_backward_params_kernel(float* part_w, float* part_b, const float* Gk, int cap, Routing rt,
                                              Tokens x, const float* kmean, const float* krstd, int n, int D,
                                              Flags f) {
  int bh = blockIdx.y;
  column_sums<2>({part_w + (size_t)bh * D, part_b + (size_t)bh * D}, n, D, [=](int t, int d, float* acc) {
    size_t tok = (size_t)bh * rt.ld + t, xt = (size_t)bh * x.ld + t, row = (size_t)bh * n + t;
    Kind kd = (Kind)rt.kind[tok];
    if (kd == kWindow) return;
    float a = f.gate_key[kd] ? x.g[xt] : 1.0f;
    float dkp = a * Gk[((size_t)bh * cap + rt.slot[tok]) * D + d];
    float xhat = ((d < f.R ? 0.0f : x.k[xt * D + d]) - kmean[row]) * krstd[row];
    acc[0] += dkp * xhat;
    acc[1] += dkp;
  });
}

}  // namespace

Flags flags(const KvmParams& p) {
  Flags f{p.R, p.S, p.ln_eps, p.vlens, {}, {}};
  for (Kind kd : {kWindow, kInitial, kAppend, kMerge}) {
    f.gate_key[kd] = gates_key(p, kd);
    f.gate_value[kd] = gates_value(p, kd);
  }
  return f;
}

Workspace& workspace() {
  static Workspace* ws = new Workspace;  // never freed: teardown order at exit is not ours to control
  return *ws;
}

void copy_state(StateView dst, StateView src, int BH, int M, int D) {
  if (BH == 0 || M == 0) return;
  size_t dp = (size_t)dst.cap * D * sizeof(double), sp = (size_t)src.cap * D * sizeof(double);
  size_t row = (size_t)M * D * sizeof(double);
  cuda_check(cudaMemcpy2DAsync(dst.s_k, dp, src.s_k, sp, row, BH, cudaMemcpyDeviceToDevice));
  cuda_check(cudaMemcpy2DAsync(dst.s_v, dp, src.s_v, sp, row, BH, cudaMemcpyDeviceToDevice));
  cuda_check(cudaMemcpy2DAsync(dst.s_len, dst.cap * sizeof(float), src.s_len, src.cap * sizeof(float),
                               M * sizeof(float), BH, cudaMemcpyDeviceToDevice));
}

void prepare_keys(const Tokens& x, int BH, int n, int D, const float* w, const float* b, const KvmParams& p) {
  Workspace& ws = workspace();
  size_t rows = (size_t)BH * n;
  float* kp = ws.kp.reserve(rows * D);
  float *mean = ws.kmean.reserve(rows), *rstd = ws.krstd.reserve(rows);
  if (rows == 0) return;
  launch(prepare_keys_kernel, warp_blocks(rows), kThreads, 0, kp, mean, rstd, x, BH, n, D, w, b, p.R, p.ln_eps);
}

void add_initial(StateView st, const Routing& r, const Tokens& x, int BH, int n, int m_first, int D, const float* w,
                 const float* b, const KvmParams& p) {
  if ((size_t)BH * n == 0) return;
  prepare_keys(x, BH, n, D, w, b, p);
  launch(found_kernel, warp_blocks((size_t)BH * n), kThreads, 0, st, r, x, workspace().kp.get(), BH, n, true, m_first,
         D, flags(p));
}

int update(StateView st, PreparedView ps, const Routing& r, const Tokens& x, int BH, int n, int M, int ctx_len,
           int avail, int D, const float* w, const float* b, const KvmParams& p) {
  int n_app = kvm::n_appends(p, ctx_len, avail, M, n), Mn = M + n_app, n_mrg = n - n_app;
  if (n_mrg > 0 && Mn <= p.S) throw std::runtime_error("kvm update: expected a non-sink slot to merge into (M > S)");
  if ((size_t)BH * n == 0) return Mn;
  Workspace& ws = workspace();
  Flags f = flags(p);
  size_t rows = (size_t)BH * n;
  prepare_keys(x, BH, n, D, w, b, p);
  const float* kp = ws.kp.get();
  // appends: the tokens whose best match in the state is weakest (ungated keys, state before appends)
  bool rank = n_app > 0 && n_app < n && M > 0;
  if (rank) {
    prepare_state(ps, st, BH, 0, M, D, w, b, p, true);
    float* S = ws.S.reserve(rows * M);
    gemm(false, true, n, M, D, 1.0f, kp, D, (long long)n * D, ps.ks, D, (long long)ps.cap * D, 0.0f, S, M,
         (long long)n * M, BH);
    launch(novelty_kernel, warp_blocks(rows), kThreads, 0, ws.novelty.reserve(rows), S, BH, n, M);
  }
  launch(select_kernel, BH, kThreads, 0, r, rank ? ws.novelty.get() : nullptr, n, n_app, M);
  if (n_app > 0) {
    launch(found_kernel, warp_blocks(rows), kThreads, 0, st, r, x, kp, BH, n, false, 0, D, f);
  }
  if (n_mrg == 0) return Mn;
  // routing: every merge against the same state (after appends), then the scatter-add. The scores
  // are of the ungated keys: g > 0 scales a token's row, so its argmax is the CPU's (gated) one.
  prepare_state(ps, st, BH, rank ? M : 0, Mn, D, w, b, p, true);
  float* S = ws.S.reserve(rows * Mn);
  gemm(false, true, n, Mn, D, 1.0f, kp, D, (long long)n * D, ps.ks, D, (long long)ps.cap * D, 0.0f, S, Mn,
       (long long)n * Mn, BH);
  launch(route_kernel, warp_blocks(rows), kThreads, 0, r, S, BH, n, Mn, p.S);
  launch(scatter_kernel, BH, kThreads, 0, st, r, x, kp, ws.next.reserve(rows), ws.lead.reserve(rows), n, D, f, 1.0f);
  return Mn;
}

void undo_merges(StateView st, const Routing& r, const Tokens& x, int BH, int n, int D, const KvmParams& p) {
  Workspace& ws = workspace();
  size_t rows = (size_t)BH * n;
  if (rows == 0) return;
  launch(scatter_kernel, BH, kThreads, 0, st, r, x, ws.kp.get(), ws.next.reserve(rows), ws.lead.reserve(rows), n, D,
         flags(p), -1.0f);
}

void prepare_state(PreparedView ps, StateView st, int BH, int lo, int hi, int D, const float* w, const float* b,
                   const KvmParams& p, bool keys_only) {
  size_t rows = (size_t)BH * (hi - lo);
  if (rows == 0) return;
  launch(prepare_state_kernel, warp_blocks(rows), kThreads, 0, ps, st, BH, lo, hi, D, w, b, p.ln_eps, p.vlens,
         keys_only);
}

void state_backward(float* Gk, float* Gv, float* Glen, float* part_w, float* part_b, const float* dks,
                    const float* dvs, int N, StateView st, PreparedView ps, int BH, int M, int D, const float* w,
                    const KvmParams& p) {
  size_t rows = (size_t)BH * M;
  if (rows == 0) return;
  launch(state_backward_kernel, warp_blocks(rows), kThreads, 0, Gk, Gv, Glen, dks, dvs, N, st, ps, BH, M, D, w,
         p.vlens);
  launch(state_backward_params_kernel, dim3(blocks_for(D, 32), BH), dim3(32, 32), 0, part_w, part_b, dks, N, st, ps, M,
         D);
}

void tokens_backward(const TokenGrads& dx, float* part_w, float* part_b, const float* Gk, const float* Gv,
                     const float* Glen, int cap, const Routing& r, const Tokens& x, int BH, int n, int D,
                     const float* w, const KvmParams& p) {
  size_t rows = (size_t)BH * n;
  if (rows == 0) return;
  Workspace& ws = workspace();
  Flags f = flags(p);
  launch(tokens_backward_kernel, warp_blocks(rows), kThreads, 0, dx, Gk, Gv, Glen, cap, r, x, ws.kp.get(),
         ws.kmean.get(), ws.krstd.get(), BH, n, D, w, f);
  launch(tokens_backward_params_kernel, dim3(blocks_for(D, 32), BH), dim3(32, 32), 0, part_w, part_b, Gk, cap, r, x,
         ws.kmean.get(), ws.krstd.get(), n, D, f);
}

}  // namespace kernels::cuda::kvm
