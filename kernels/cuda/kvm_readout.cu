// The joint read-out of KVM (docs/kvm.md section 6) for a block of queries of BH heads: the CUDA
// twin of kernels/cpu/kvm_readout.cpp, one softmax over [state slots; window keys]. As on the CPU
// the stacked K = [ks*ts; k*tf] and V = [vs; v] are gathered first, then every product is a cuBLAS
// fp32 GEMM strided-batched over the heads; the masked softmax and its backward are a warp per
// query row. The scores of a block (nq x (M+nw) per head) are kept whole, so no online softmax is
// needed; the backward recomputes them.
#include <cmath>

#include "kernels/cuda/kvm_internal.cuh"

namespace kernels::cuda::kvm {

namespace {

constexpr int kWarps = kThreads / 32;

// K (BH,N,D) = [ks*ts; k*tf], V (BH,N,D) = [vs; v], N = M + nw
__global__ void gather_kv_kernel(float* K, float* V, Readout r) {
  int N = r.M + r.nw;
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)r.BH * N * r.D) return;
  int d = (int)(i % r.D), j = (int)(i / r.D % N), bh = (int)(i / ((size_t)r.D * N)), h = bh % r.H;
  if (j < r.M) {
    size_t off = ((size_t)bh * r.ps.cap + j) * r.D + d;
    K[i] = r.ps.ks[off] * (r.tau_state ? r.tau_state[h] : 1.0f);
    V[i] = r.ps.vs[off];
  } else {
    size_t off = ((size_t)bh * r.kv_ld + j - r.M) * r.D + d;
    K[i] = r.k[off] * (r.tau_front ? r.tau_front[h] : 1.0f);
    V[i] = r.v[off];
  }
}

// Scores (BH,nq,N) -> probabilities in place: query i (position q0+i) sees every slot and the
// window up to itself; the rest is 0.
__global__ void softmax_kernel(float* S, Readout r) {
  size_t row = (size_t)blockIdx.x * kWarps + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (row >= (size_t)r.BH * r.nq) return;
  int i = (int)(row % r.nq), N = r.M + r.nw;
  int visible = r.M + min(r.nw, r.q0 + i - r.w0 + 1);
  float* s = S + row * N;
  float mx = -INFINITY;
  for (int j = lane; j < visible; j += 32) mx = fmaxf(mx, s[j]);
  mx = warp_max(mx);
  float sum = 0.0f;
  for (int j = lane; j < visible; j += 32) {
    s[j] = expf(s[j] - mx);
    sum += s[j];
  }
  float inv = 1.0f / warp_sum(sum);
  for (int j = lane; j < N; j += 32) s[j] = j < visible ? s[j] * inv : 0.0f;
}

// dP (BH,nq,N) -> dS = P * (dP - sum_j P dP) in place
__global__ void softmax_backward_kernel(float* dP, const float* P, int rows, int N) {
  size_t row = (size_t)blockIdx.x * kWarps + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (row >= (size_t)rows) return;
  const float* p = P + row * N;
  float* ds = dP + row * N;
  float rowsum = 0.0f;
  for (int j = lane; j < N; j += 32) rowsum += p[j] * ds[j];
  rowsum = warp_sum(rowsum);
  for (int j = lane; j < N; j += 32) ds[j] = p[j] * (ds[j] - rowsum);
}

// The stacked gradients dK, dV (BH,N,D) apart, a block per head: window rows to dk += tf*dK,
// dv += dV; state rows of dK become dks = ts*dK in place (dV's are dvs already); the temperatures'
// gradients sum dK against the unscaled keys into part_tf, part_ts (BH).
__global__ void split_kernel(float* dk, float* dv, float* part_tf, float* part_ts, float* dK, const float* dV,
                             Readout r) {
  __shared__ float red[32];
  int bh = blockIdx.x, h = bh % r.H, N = r.M + r.nw, D = r.D;
  float tf = r.tau_front ? r.tau_front[h] : 1.0f, ts = r.tau_state ? r.tau_state[h] : 1.0f;
  float gtf = 0.0f, gts = 0.0f;
  for (size_t i = threadIdx.x; i < (size_t)N * D; i += blockDim.x) {
    int j = (int)(i / D), d = (int)(i % D);
    size_t wi = (size_t)bh * N * D + i;
    float x = dK[wi];
    if (j < r.M) {
      gts += x * r.ps.ks[((size_t)bh * r.ps.cap + j) * D + d];
      dK[wi] = ts * x;
    } else {
      size_t off = ((size_t)bh * r.kv_ld + j - r.M) * D + d;
      gtf += x * r.k[off];
      dk[off] += tf * x;
      dv[off] += dV[wi];
    }
  }
  gtf = block_sum(gtf, red);
  gts = block_sum(gts, red);
  if (threadIdx.x == 0) part_tf[bh] += gtf, part_ts[bh] += gts;
}

// Fills ws.K, ws.V and ws.S (the probabilities) of a read-out.
void probabilities(const float* q, const Readout& r) {
  Workspace& ws = workspace();
  int N = r.M + r.nw;
  size_t KD = (size_t)N * r.D, SN = (size_t)r.nq * N;
  float *K = ws.K.reserve(r.BH * KD), *V = ws.V.reserve(r.BH * KD), *S = ws.S.reserve(r.BH * SN);
  launch(gather_kv_kernel, blocks_for(r.BH * KD), kThreads, 0, K, V, r);
  gemm(false, true, r.nq, N, r.D, 1.0f / sqrtf((float)r.D), q, r.D, (long long)r.q_ld * r.D, K, r.D, KD, 0.0f, S, N,
       SN, r.BH);
  launch(softmax_kernel, blocks_for(r.BH * (size_t)r.nq, kWarps), kThreads, 0, S, r);
}

}  // namespace

void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* A, int lda, long long sA, const float* B,
          int ldb, long long sB, float beta, float* C, int ldc, long long sC, int batch) {
  // column-major: C^T (n,m) = op(B)^T (n,k) @ op(A)^T (k,m), B and A read as stored
  cublas_check(cublasSgemmStridedBatched(cublas_handle(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                         n, m, k, &alpha, B, ldb, sB, A, lda, sA, &beta, C, ldc, sC, batch));
}

void reserve_readout(int BH, int D, size_t rows, size_t scores, bool backward) {
  Workspace& ws = workspace();
  size_t KD = (size_t)BH * rows * D, SN = (size_t)BH * scores;
  ws.K.reserve(KD), ws.V.reserve(KD), ws.S.reserve(SN);
  if (backward) ws.dK.reserve(KD), ws.dV.reserve(KD), ws.dP.reserve(SN);
}

void readout_forward(float* out, const float* q, const Readout& r) {
  if (r.BH == 0 || r.nq == 0) return;
  probabilities(q, r);
  Workspace& ws = workspace();
  int N = r.M + r.nw;
  // out (nq,D) = P (nq,N) V (N,D)
  gemm(false, false, r.nq, r.D, N, 1.0f, ws.S.get(), N, (long long)r.nq * N, ws.V.get(), r.D, (long long)N * r.D,
       0.0f, out, r.D, (long long)r.q_ld * r.D, r.BH);
}

void readout_backward(float* dq, float* dk, float* dv, float* part_tf, float* part_ts, const float* dout,
                      const float* q, const Readout& r) {
  if (r.BH == 0 || r.nq == 0) return;
  probabilities(q, r);
  Workspace& ws = workspace();
  int N = r.M + r.nw;
  long long KD = (long long)N * r.D, SN = (long long)r.nq * N, QD = (long long)r.q_ld * r.D;
  float scale = 1.0f / sqrtf((float)r.D);
  const float *K = ws.K.get(), *V = ws.V.get(), *P = ws.S.get();
  float *dP = ws.dP.reserve(r.BH * SN), *dK = ws.dK.reserve(r.BH * KD), *dV = ws.dV.reserve(r.BH * KD);
  // dP = dout V^T, then dS = P * (dP - rowsum(P dP)) in place
  gemm(false, true, r.nq, N, r.D, 1.0f, dout, r.D, QD, V, r.D, KD, 0.0f, dP, N, SN, r.BH);
  launch(softmax_backward_kernel, blocks_for(r.BH * (size_t)r.nq, kWarps), kThreads, 0, dP, P, r.BH * r.nq, N);
  // dq += scale dS K; dK = scale dS^T q; dV = P^T dout
  gemm(false, false, r.nq, r.D, N, scale, dP, N, SN, K, r.D, KD, 1.0f, dq, r.D, QD, r.BH);
  gemm(true, false, N, r.D, r.nq, scale, dP, N, SN, q, r.D, QD, 0.0f, dK, r.D, KD, r.BH);
  gemm(true, false, N, r.D, r.nq, 1.0f, P, N, SN, dout, r.D, QD, 0.0f, dV, r.D, KD, r.BH);
  launch(split_kernel, r.BH, kThreads, 0, dk, dv, part_tf, part_ts, dK, dV, r);
}

}  // namespace kernels::cuda::kvm
