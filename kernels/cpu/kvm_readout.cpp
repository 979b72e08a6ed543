// The joint read-out of KVM (docs/kvm.md section 6) for a block of queries of one (batch, head):
// one softmax over [state slots; window keys], as two sgemms against the stacked K and V. The
// scores of a block (nq x (M + nw), at most 256 x ~3400 floats) fit in memory, so unlike
// attention.cpp no online softmax is needed; the backward recomputes them.
#include <cmath>

#include "kernels/cpu/kvm_internal.h"
#include "kernels/cpu/vecmath.h"

namespace kernels::cpu::kvm {

namespace {

// Fills sc.K, sc.V ((M+nw),D) and sc.S (nq,M+nw) with the softmax probabilities.
void probabilities(ReadoutScratch& sc, const float* q, int nq, int q0, const float* k, const float* v, int w0,
                   int nw, const Prepared& ps, float tf, float ts, int D) {
  int M = ps.M, N = M + nw;
  sc.K.resize((size_t)N * D);
  sc.V.resize((size_t)N * D);
  sc.S.resize((size_t)nq * N);
  for (size_t i = 0; i < (size_t)M * D; i++) sc.K[i] = ps.ks[i] * ts;
  for (size_t i = 0; i < (size_t)nw * D; i++) sc.K[(size_t)M * D + i] = k[i] * tf;
  std::copy(ps.vs.begin(), ps.vs.begin() + (size_t)M * D, sc.V.begin());
  std::copy(v, v + (size_t)nw * D, sc.V.begin() + (size_t)M * D);
  serial_gemm(false, true, nq, N, D, 1.0f / std::sqrt((float)D), q, D, sc.K.data(), D,
              0.0f, sc.S.data(), N);
  for (int i = 0; i < nq; i++) {
    float* s = sc.S.data() + (size_t)i * N;
    int visible = M + std::min(nw, q0 + i - w0 + 1);  // every slot, the window up to the query itself
    float mx = -INFINITY;
    for (int j = 0; j < visible; j++) mx = std::max(mx, s[j]);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < visible; j++) {
      s[j] = vexp(s[j] - mx);
      sum += s[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < visible; j++) s[j] *= inv;
    std::fill(s + visible, s + N, 0.0f);
  }
}

}  // namespace

void readout_forward(float* out, const float* q, int nq, int q0, const float* k, const float* v, int w0, int nw,
                     const Prepared& ps, float tf, float ts, int D, ReadoutScratch& sc) {
  probabilities(sc, q, nq, q0, k, v, w0, nw, ps, tf, ts, D);
  int N = ps.M + nw;
  serial_gemm(false, false, nq, D, N, 1.0f, sc.S.data(), N, sc.V.data(), D, 0.0f, out,
              D);
}

void readout_backward(float* dq, float* dk, float* dv, float* dks, float* dvs, float* dtf, float* dts,
                      const float* dout, const float* q, int nq, int q0, const float* k, const float* v, int w0,
                      int nw, const Prepared& ps, float tf, float ts, int D, ReadoutScratch& sc) {
  probabilities(sc, q, nq, q0, k, v, w0, nw, ps, tf, ts, D);
  int M = ps.M, N = M + nw;
  float scale = 1.0f / std::sqrt((float)D);
  sc.dP.resize((size_t)nq * N);
  sc.dK.resize((size_t)N * D);
  sc.dV.resize((size_t)N * D);
  // dP = dout V^T, then dS = P * (dP - sum_j P dP) in place
  serial_gemm(false, true, nq, N, D, 1.0f, dout, D, sc.V.data(), D, 0.0f, sc.dP.data(),
              N);
  for (int i = 0; i < nq; i++) {
    const float* p = sc.S.data() + (size_t)i * N;
    float* ds = sc.dP.data() + (size_t)i * N;
    float rowsum = 0.0f;
#pragma omp simd reduction(+ : rowsum)
    for (int j = 0; j < N; j++) rowsum += p[j] * ds[j];
#pragma omp simd
    for (int j = 0; j < N; j++) ds[j] = p[j] * (ds[j] - rowsum);
  }
  // dq += scale dS K; dK = scale dS^T q; dV = P^T dout
  serial_gemm(false, false, nq, D, N, scale, sc.dP.data(), N, sc.K.data(), D, 1.0f, dq,
              D);
  serial_gemm(true, false, N, D, nq, scale, sc.dP.data(), N, q, D, 0.0f, sc.dK.data(), D);
  serial_gemm(true, false, N, D, nq, 1.0f, sc.S.data(), N, dout, D, 0.0f, sc.dV.data(),
              D);
  float gtf = 0.0f, gts = 0.0f;
  for (int j = 0; j < nw; j++) {
    const float* g = sc.dK.data() + (size_t)(M + j) * D;
    const float* gv = sc.dV.data() + (size_t)(M + j) * D;
    for (int d = 0; d < D; d++) {
      gtf += g[d] * k[(size_t)j * D + d];
      dk[(size_t)j * D + d] += tf * g[d];
      dv[(size_t)j * D + d] += gv[d];
    }
  }
  for (size_t i = 0; i < (size_t)M * D; i++) {
    gts += sc.dK[i] * ps.ks[i];
    dks[i] = ts * sc.dK[i];
    dvs[i] = sc.dV[i];
  }
  *dtf += gtf;
  *dts += gts;
}

}  // namespace kernels::cpu::kvm
