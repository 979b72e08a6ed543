#pragma once
// The pieces of KVM attention on the GPU (docs/kvm.md) that prefill (kvm_forward.cu), its backward
// (kvm_backward.cu) and decode (kvm_decode.cu) share: the CUDA twin of kernels/cpu/kvm_internal.h.
// The host-side rules (Step, schedule, bswa_begin, n_appends, check_params, gates_key/value) are
// kernels/kvm_rules.h's, which the CPU twin follows too, so both backends walk the same chunks
// with the same budget. The state sizes depend only on (ctx_len, avail, M), the same for every
// (batch, head), so the host knows every shape and each launcher below works on BH = B*H heads at
// once: the kernels put one warp or block per (head, row), the read-out GEMMs are cuBLAS
// strided-batched over the heads.
//
// Layout convention of the views: rows of D floats; head bh's row t of a token tensor is at
// x + (bh*ld + t)*D (its gate g + bh*ld + t, its routing kind/slot + bh*ld + t), where ld is the
// tensor's rows per head (T for (B,H,T,D), 1 for decode's (H,D), the window capacity for decode's
// window); the views point at the first row used. States and prepared states hold `cap` slots
// per head.
#include <cstdint>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/kvm.h"
#include "kernels/kvm_rules.h"

namespace kernels::cuda::kvm {

using namespace kernels::kvm;  // the schedule, budget, gating and Kind both twins share

// What the kernels need of KvmParams, resolved on the host (gates_key/value are host code).
struct Flags {
  int R, S;
  float eps;
  bool vlens;
  bool gate_key[4], gate_value[4];  // by Kind: whether g multiplies the prepared key / value
};
Flags flags(const KvmParams& p);

// Tokens of BH heads: k, v rows and gates g, ld rows per head.
struct Tokens {
  const float* k;
  const float* v;
  const float* g;
  size_t ld;
};
// Their gradients, same layout.
struct TokenGrads {
  float* dk;
  float* dv;
  float* dg;
  size_t ld;
};
// Routing of tokens (kind, slot), ld tokens per head.
struct Routing {
  int8_t* kind;
  int* slot;
  size_t ld;
};

// The states of BH heads (doc section 5): sums in double as on the CPU, so that the reversible
// backward subtracts exactly what the forward added and both backends build the same sums.
struct StateView {
  double* s_k;   // (BH,cap,D)
  double* s_v;   // (BH,cap,D)
  float* s_len;  // (BH,cap)
  int cap;
};
struct StateArrays {
  DeviceArray<double> s_k, s_v;
  DeviceArray<float> s_len;
  StateView reserve(int BH, int cap, int D) {
    size_t rows = (size_t)BH * cap;
    return {s_k.reserve(rows * D), s_v.reserve(rows * D), s_len.reserve(rows), cap};
  }
  StateView view(int cap) const { return {s_k.get(), s_v.get(), s_len.get(), cap}; }
  void swap(StateArrays& o) noexcept {
    s_k.swap(o.s_k);
    s_v.swap(o.s_v);
    s_len.swap(o.s_len);
  }
};
// Copies slots [0,M) of BH heads from src to dst (the capacities may differ).
void copy_state(StateView dst, StateView src, int BH, int M, int D);

// ks = ln_s(s_k) with its statistics, and the read values vs (cpu::kvm::Prepared, less the
// unused norms).
struct PreparedView {
  float* ks;    // (BH,cap,D)
  float* vs;    // (BH,cap,D)
  float* mean;  // (BH,cap)
  float* rstd;  // (BH,cap)
  int cap;
};
struct PreparedArrays {
  DeviceArray<float> ks, vs, mean, rstd;
  PreparedView reserve(int BH, int cap, int D) {
    size_t rows = (size_t)BH * cap;
    return {ks.reserve(rows * D), vs.reserve(rows * D), mean.reserve(rows), rstd.reserve(rows), cap};
  }
};

// Scratch of the launchers, one per process (kvm_state.cu; calls are serialised on the default
// stream, the tapes and caches own what outlives a call). Each array is reserved by the launcher
// that writes it (or ahead of a pass by its driver, reserve_readout), so a pointer taken before
// another launcher runs stays valid.
struct Workspace {
  DeviceArray<float> kp, kmean, krstd;  // (BH,n,D), (BH,n), (BH,n): prepared keys of a chunk
  DeviceArray<float> novelty;           // (BH,n)
  DeviceArray<int> next;                // (BH,n) merge chains of a scatter
  DeviceArray<int8_t> lead;             // (BH,n)
  DeviceArray<float> S, dP;             // (BH,nq,N) scores -> probabilities; dP -> dS (update: (BH,n,M))
  DeviceArray<float> K, V, dK, dV;      // (BH,N,D) [ks*ts; k*tf], [vs; v] and their gradients
  PreparedArrays prepared;              // (BH,cap,...) of the state being read (prefill, backward)
  StateArrays state;                    // (BH,cap,...) the backward's walk from the final state
  DeviceArray<float> Gk, Gv, Glen;      // (BH,cap,D), (BH,cap,D), (BH,cap) gradients of the state sums
  DeviceArray<float> part_w, part_b;    // (BH,D) per-head partial gradients of ln_s, summed in order
  DeviceArray<float> part_tf, part_ts;  // (BH)
};
Workspace& workspace();

// The chunk schedule of T tokens (kvm::schedule) with the slot counts it leads to (the same
// for every head) and the largest read-out and routing it computes, to size the workspace once
// (kvm_forward.cu).
struct Plan {
  std::vector<Step> steps;
  std::vector<int> m_after;  // (updates) slots after each update, as KvmTape::slots_after_update
  int F, m0, cap;            // causal queries [0,F), initial chunk [0,m0), final slot count
  size_t rows;               // per head: most rows M+nw of a read-out's K and V
  size_t scores;             // per head: most floats of a score matrix (nq*(M+nw), or n*M of a routing)
};
Plan plan(int T, const KvmParams& p);
// Grows the read-out's scratch to `rows` K/V rows and `scores` floats per head (and their
// gradients' with backward), so that the calls of a pass never reallocate (each would synchronise)
// (kvm_readout.cu, as gemm).
void reserve_readout(int BH, int D, size_t rows, size_t scores, bool backward);

// Row-major C (m,n) = alpha op(A) op(B) + beta C for `batch` matrices sA, sB, sC floats apart.
void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* A, int lda, long long sA, const float* B,
          int ldb, long long sB, float beta, float* C, int ldc, long long sC, int batch);

// --- the state (kvm_state.cu) ---

// kp (BH,n,D) = ln_s([0..0, k[R:D]]) of n tokens (doc section 4) and its statistics mean, rstd
// (BH,n), into ws.kp, ws.kmean, ws.krstd.
void prepare_keys(const Tokens& x, int BH, int n, int D, const float* w, const float* b, const KvmParams& p);

// n tokens become initial slots m_first.. (doc section 7); routing may be null (decode keeps none).
void add_initial(StateView st, const Routing& r, const Tokens& x, int BH, int n, int m_first, int D, const float* w,
                 const float* b, const KvmParams& p);

// Folds n tokens into states of M slots (doc section 8): routing receives kinds and slots; ps is
// overwritten (ks of the rows it routes against). Returns the new slot count.
int update(StateView st, PreparedView ps, const Routing& r, const Tokens& x, int BH, int n, int M, int ctx_len,
           int avail, int D, const float* w, const float* b, const KvmParams& p);

// Undoes the merges of an update (its appended slots are dropped by the caller, which shrinks M):
// subtracts the merged contributions in the order update added them. Needs prepare_keys(x).
void undo_merges(StateView st, const Routing& r, const Tokens& x, int BH, int n, int D, const KvmParams& p);

// Rows [lo,hi) of ps from st: ks, mean, rstd, and vs unless keys_only.
void prepare_state(PreparedView ps, StateView st, int BH, int lo, int hi, int D, const float* w, const float* b,
                   const KvmParams& p, bool keys_only);

// Gradients of ks and vs (dks, dvs: (BH,N,D) rows [0,M), ws.dK and ws.dV after readout_backward)
// back to the state sums: Gk, Gv (BH,cap,D), Glen (BH,cap) +=; ln_s's part_w, part_b (BH,D) +=.
void state_backward(float* Gk, float* Gv, float* Glen, float* part_w, float* part_b, const float* dks,
                    const float* dvs, int N, StateView st, PreparedView ps, int BH, int M, int D, const float* w,
                    const KvmParams& p);

// Gradients of the state sums back to the n tokens that entered them (dk non-RoPE dims, dv, dg +=;
// part_w, part_b (BH,D) +=). Needs prepare_keys(x).
void tokens_backward(const TokenGrads& dx, float* part_w, float* part_b, const float* Gk, const float* Gv,
                     const float* Glen, int cap, const Routing& r, const Tokens& x, int BH, int n, int D,
                     const float* w, const KvmParams& p);

// --- the read-out (kvm_readout.cu) ---

// One read-out of BH heads (doc section 6): nq queries at positions q0.. (q, out: ld rows per head)
// over M state slots of ps and the window rows k, v at positions [w0, w0+nw) (kv_ld rows per
// head). M = 0: plain causal attention. tau_front/tau_state (H) or null for 1; head bh uses bh % H.
struct Readout {
  int BH, H, D;
  int nq, q0;
  size_t q_ld;
  const float* k;
  const float* v;
  int w0, nw;
  size_t kv_ld;
  PreparedView ps;
  int M;
  const float* tau_front;
  const float* tau_state;
};
void readout_forward(float* out, const float* q, const Readout& r);
// Its backward: dq, dk, dv (window rows, same layouts) +=; rows [0,M) of ws.dK, ws.dV (BH,M+nw,D)
// receive the gradients of ks and vs; part_tf, part_ts (BH) += the temperatures' gradients.
void readout_backward(float* dq, float* dk, float* dv, float* part_tf, float* part_ts, const float* dout,
                      const float* q, const Readout& r);

}  // namespace kernels::cuda::kvm

// The device part of a tape (kvm.h): what the backward reads.
struct kernels::KvmTape::Device {
  int B = 0, H = 0, T = 0, D = 0;
  int cap = 0;             // slots per head of the states below (the final count)
  bool snapshots = false;  // copy of KvmTape::snapshots at forward time
  cuda::DeviceArray<int8_t> kind;       // (B*H,T)
  cuda::DeviceArray<int> slot;          // (B*H,T)
  cuda::kvm::StateArrays final_state;   // (B*H,cap,...)
  cuda::kvm::StateArrays states;        // snapshots only: (steps,B*H,cap,...) the state each read-out saw
  cuda::kvm::StateView snapshot(int step) const {
    size_t rows = (size_t)step * B * H * cap;
    return {states.s_k.get() + rows * D, states.s_v.get() + rows * D, states.s_len.get() + rows, cap};
  }
};
