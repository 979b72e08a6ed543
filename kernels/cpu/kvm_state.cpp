// The KVM state of one (batch, head) and everything that changes it (docs/kvm.md sections 4, 5,
// 8): prepared keys, the initial chunk, the budgeted update (its budget, section 9, is
// kernels/kvm_rules.cpp's) with its novelty-ranked appends and argmax routing, the undo the
// reversible backward needs, and the gradients of the state sums back to the tokens that built
// them.
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "kernels/cpu/kvm_internal.h"

namespace kernels::cpu::kvm {

namespace {

// Reductions in double: they feed ln_s and norms of sums over many tokens.
template <class X, class Y>
double dot(const X* a, const Y* b, int D) {
  double s = 0.0;
  for (int d = 0; d < D; d++) s += (double)a[d] * b[d];
  return s;
}

template <class X>
double norm(const X* a, int D) { return std::sqrt(dot(a, a, D)); }

// y += a * x with the product rounded to fp32 first, so that an undo (a -> -a) subtracts exactly
// what the update added.
template <class Y>
void axpy(Y* y, float a, const float* x, int D) {
  for (int d = 0; d < D; d++) y[d] += a * x[d];
}

// scores (n,M) = x (n,D) ks (M,D)^T
void scores(float* s, const float* x, int n, const float* ks, int M, int D) {
  serial_gemm(false, true, n, M, D, 1.0f, x, D, ks, D, 0.0f, s, M);
}

// ln_s over D of n rows: y = (x - mean) * rstd * w + b, biased variance. mean/rstd (n) may be null.
template <class X>
void ln_rows(float* y, float* mean, float* rstd, const X* x, int n, int D, const float* w, const float* b,
             float eps) {
  for (int i = 0; i < n; i++) {
    const X* xi = x + (size_t)i * D;
    double mu = 0.0;
    for (int d = 0; d < D; d++) mu += xi[d];
    mu /= D;
    double var = 0.0;
    for (int d = 0; d < D; d++) var += (xi[d] - mu) * (xi[d] - mu);
    double rs = 1.0 / std::sqrt(var / D + eps);
    float* yi = y + (size_t)i * D;
    for (int d = 0; d < D; d++) yi[d] = (float)((xi[d] - mu) * rs) * w[d] + b[d];
    if (mean) mean[i] = (float)mu;
    if (rstd) rstd[i] = (float)rs;
  }
}

// Its backward for the same rows: dx, dw, db += .
template <class X>
void ln_rows_backward(float* dx, float* dw, float* db, const float* dy, const X* x, const float* mean,
                      const float* rstd, int n, int D, const float* w) {
  for (int i = 0; i < n; i++) {
    const X* xi = x + (size_t)i * D;
    const float* dyi = dy + (size_t)i * D;
    float dmean = 0.0f, dproj = 0.0f;  // mean of dy*w and of dy*w*xhat
    for (int d = 0; d < D; d++) {
      float xhat = (float)(xi[d] - mean[i]) * rstd[i];
      dmean += dyi[d] * w[d];
      dproj += dyi[d] * w[d] * xhat;
      dw[d] += dyi[d] * xhat;
      db[d] += dyi[d];
    }
    dmean /= D;
    dproj /= D;
    float* dxi = dx + (size_t)i * D;
    for (int d = 0; d < D; d++) {
      float xhat = (float)(xi[d] - mean[i]) * rstd[i];
      dxi[d] += rstd[i] * (dyi[d] * w[d] - dmean - xhat * dproj);
    }
  }
}

}  // namespace

void prepare_keys(float* kp, float* xpad, const float* k, int n, int D, const float* w, const float* b,
                  const KvmParams& p) {
  for (int i = 0; i < n; i++) {
    float* xi = xpad + (size_t)i * D;
    std::fill(xi, xi + p.R, 0.0f);
    std::copy(k + (size_t)i * D + p.R, k + (size_t)(i + 1) * D, xi + p.R);
  }
  ln_rows(kp, nullptr, nullptr, xpad, n, D, w, b, p.ln_eps);
}

namespace {

// Writes token t (prepared key kp, value v, gate g) into the empty slot m as `kind`.
void found_slot(State& st, int m, const float* kp, const float* v, float g, Kind kind, int D, const KvmParams& p) {
  float a = gates_key(p, kind) ? g : 1.0f;
  float bv = gates_value(p, kind) ? g : 1.0f;
  double* sk = st.s_k.data() + (size_t)m * D;
  double* sv = st.s_v.data() + (size_t)m * D;
  for (int d = 0; d < D; d++) {
    sk[d] = a * kp[d];
    sv[d] = bv * v[d];
  }
  // vlens: the founding value's norm; the initial chunk keeps |v| even when gated (doc section 7)
  st.s_len[m] = p.vlens ? (kind == kInitial ? norm(v, D) : norm(sv, D)) : 1.0f;
}

}  // namespace

void add_initial(State& st, const float* k, const float* v, const float* g, int n, int D, const float* w,
                 const float* b, const KvmParams& p) {
  std::vector<float> kp((size_t)n * D), xpad((size_t)n * D);
  prepare_keys(kp.data(), xpad.data(), k, n, D, w, b, p);
  int M = st.M;
  st.resize(M + n, D);
  for (int t = 0; t < n; t++)
    found_slot(st, M + t, kp.data() + (size_t)t * D, v + (size_t)t * D, g[t], kInitial, D, p);
}

void update(State& st, int8_t* kind, int* slot, const float* k, const float* v, const float* g, int n, int ctx_len,
            int avail, int D, const float* w, const float* b, const KvmParams& p) {
  int M = st.M;
  int n_app = n_appends(p, ctx_len, avail, M, n);
  std::vector<float> kp((size_t)n * D), xpad((size_t)n * D);  // (n,D)
  prepare_keys(kp.data(), xpad.data(), k, n, D, w, b, p);
  std::vector<float> ks, s;  // (M,D) ln_s(s_k); (n,M) scores

  // appends: the n_app tokens whose best match in the state is weakest ("smallest novelty", doc 8)
  std::fill(kind, kind + n, kMerge);
  if (n_app == n || (n_app > 0 && M == 0)) {
    std::fill(kind + n - n_app, kind + n, kAppend);  // everything, or the last n_app of an empty state
  } else if (n_app > 0) {
    ks.resize((size_t)M * D);
    s.resize((size_t)n * M);
    ln_rows(ks.data(), nullptr, nullptr, st.s_k.data(), M, D, w, b, p.ln_eps);
    scores(s.data(), kp.data(), n, ks.data(), M, D);  // ungated keys, state before appends, sink included
    std::vector<float> novelty(n);
    for (int t = 0; t < n; t++) novelty[t] = *std::max_element(s.data() + (size_t)t * M, s.data() + (size_t)(t + 1) * M);
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return novelty[x] < novelty[y]; });
    for (int i = 0; i < n_app; i++) kind[order[i]] = kAppend;
  }
  st.resize(M + n_app, D);
  for (int t = 0, m = M; t < n; t++) {  // new slots in time order
    if (kind[t] != kAppend) continue;
    found_slot(st, m, kp.data() + (size_t)t * D, v + (size_t)t * D, g[t], kAppend, D, p);
    slot[t] = m++;
  }
  int n_mrg = n - n_app;
  if (n_mrg == 0) return;

  // routing: every merge against the same state (after appends), then scatter-add
  int Mn = st.M;
  if (Mn <= p.S) throw std::runtime_error("kvm update: expected a non-sink slot to merge into (M > S)");
  ks.resize((size_t)Mn * D);
  ln_rows(ks.data(), nullptr, nullptr, st.s_k.data(), Mn, D, w, b, p.ln_eps);
  std::vector<float> kg((size_t)n_mrg * D);  // (n_mrg,D) gated keys of the merged tokens
  std::vector<int> tok(n_mrg);
  for (int t = 0, i = 0; t < n; t++) {
    if (kind[t] != kMerge) continue;
    float a = gates_key(p, kMerge) ? g[t] : 1.0f;
    for (int d = 0; d < D; d++) kg[(size_t)i * D + d] = a * kp[(size_t)t * D + d];
    tok[i++] = t;
  }
  s.resize((size_t)n_mrg * Mn);
  scores(s.data(), kg.data(), n_mrg, ks.data(), Mn, D);
  for (int i = 0; i < n_mrg; i++) {
    const float* si = s.data() + (size_t)i * Mn;
    int best = p.S;
    for (int m = p.S + 1; m < Mn; m++)
      if (si[m] > si[best]) best = m;  // strict: ties go to the lowest index
    slot[tok[i]] = best;
  }
  for (int i = 0; i < n_mrg; i++) {
    int t = tok[i], m = slot[t];
    float bv = gates_value(p, kMerge) ? g[t] : 1.0f;
    axpy(st.s_k.data() + (size_t)m * D, 1.0f, kg.data() + (size_t)i * D, D);
    axpy(st.s_v.data() + (size_t)m * D, bv, v + (size_t)t * D, D);
    if (!p.vlens) st.s_len[m] += 1.0f;
  }
}

void undo_update(State& st, const int8_t* kind, const int* slot, const float* k, const float* v, const float* g,
                 int n, int m_before, int D, const float* w, const float* b, const KvmParams& p) {
  std::vector<float> kp((size_t)n * D), xpad((size_t)n * D);
  prepare_keys(kp.data(), xpad.data(), k, n, D, w, b, p);
  for (int t = 0; t < n; t++) {
    if (kind[t] != kMerge) continue;
    int m = slot[t];
    float a = gates_key(p, kMerge) ? g[t] : 1.0f;
    float bv = gates_value(p, kMerge) ? g[t] : 1.0f;
    axpy(st.s_k.data() + (size_t)m * D, -a, kp.data() + (size_t)t * D, D);
    axpy(st.s_v.data() + (size_t)m * D, -bv, v + (size_t)t * D, D);
    if (!p.vlens) st.s_len[m] -= 1.0f;
  }
  st.resize(m_before, D);
}

void prepare_state(Prepared& ps, const State& st, int D, const float* w, const float* b, const KvmParams& p) {
  int M = st.M;
  ps.M = M;
  ps.ks.resize((size_t)M * D);
  ps.vs.resize((size_t)M * D);
  ps.mean.resize(M);
  ps.rstd.resize(M);
  ps.vnorm.resize(M);
  ln_rows(ps.ks.data(), ps.mean.data(), ps.rstd.data(), st.s_k.data(), M, D, w, b, p.ln_eps);
  for (int m = 0; m < M; m++) {
    const double* sv = st.s_v.data() + (size_t)m * D;
    double n = norm(sv, D);
    ps.vnorm[m] = (float)n;
    double c = p.vlens ? st.s_len[m] / n : 1.0 / st.s_len[m];
    for (int d = 0; d < D; d++) ps.vs[(size_t)m * D + d] = (float)(c * sv[d]);
  }
}

void state_backward(float* Gk, float* Gv, float* Glen, float* dw, float* db, const float* dks, const float* dvs,
                    const State& st, const Prepared& ps, int D, const float* w, const KvmParams& p) {
  int M = ps.M;
  ln_rows_backward(Gk, dw, db, dks, st.s_k.data(), ps.mean.data(), ps.rstd.data(), M, D, w);
  for (int m = 0; m < M; m++) {
    const double* sv = st.s_v.data() + (size_t)m * D;
    const float* g = dvs + (size_t)m * D;
    float* gv = Gv + (size_t)m * D;
    if (p.vlens) {  // vs = s_v/n * s_len: d s_v = s_len/n (g - u (u.g)), d s_len = u.g, u = s_v/n
      double n = norm(sv, D);
      double ug = dot(sv, g, D) / n;
      double c = st.s_len[m] / n;
      for (int d = 0; d < D; d++) gv[d] += (float)(c * (g[d] - sv[d] / n * ug));
      Glen[m] += (float)ug;
    } else {  // the count is a constant
      axpy(gv, 1.0f / st.s_len[m], g, D);
    }
  }
}

void tokens_backward(float* dk, float* dv, float* dg, float* dw, float* db, const float* Gk, const float* Gv,
                     const float* Glen, const int8_t* kind, const int* slot, const float* k, const float* v,
                     const float* g, int n, int D, const float* w, const float* b, const KvmParams& p) {
  std::vector<float> xpad(D), kp(D), dkp(D), dx(D);
  for (int t = 0; t < n; t++) {
    Kind kd = (Kind)kind[t];
    if (kd == kWindow) continue;
    int m = slot[t];
    const float* gk = Gk + (size_t)m * D;
    const float* gv = Gv + (size_t)m * D;
    const float* vt = v + (size_t)t * D;
    float* dvt = dv + (size_t)t * D;
    // key: s_k[m] += a * ln_s([0, k[R:D]])
    float mean, rstd;
    std::fill(xpad.begin(), xpad.begin() + p.R, 0.0f);
    std::copy(k + (size_t)t * D + p.R, k + (size_t)(t + 1) * D, xpad.begin() + p.R);
    ln_rows(kp.data(), &mean, &rstd, xpad.data(), 1, D, w, b, p.ln_eps);
    bool ga = gates_key(p, kd);
    float a = ga ? g[t] : 1.0f;
    for (int d = 0; d < D; d++) dkp[d] = a * gk[d];
    std::fill(dx.begin(), dx.end(), 0.0f);
    ln_rows_backward(dx.data(), dw, db, dkp.data(), xpad.data(), &mean, &rstd, 1, D, w);
    for (int d = p.R; d < D; d++) dk[(size_t)t * D + d] += dx[d];  // the RoPE dims were zeroed
    if (ga) dg[t] += dot(gk, kp.data(), D);
    // value: s_v[m] += bv * v
    bool gb = gates_value(p, kd);
    axpy(dvt, gb ? g[t] : 1.0f, gv, D);
    if (gb) dg[t] += dot(gv, vt, D);
    // s_len = |bl * v| of the founding token (the initial chunk: |v| even when gated)
    if (p.vlens && kd != kMerge) {
      bool gl = kd == kAppend && gb;
      float nv = norm(vt, D);
      axpy(dvt, Glen[m] * (gl ? g[t] : 1.0f) / nv, vt, D);
      if (gl) dg[t] += Glen[m] * nv;
    }
  }
}

}  // namespace kernels::cpu::kvm
