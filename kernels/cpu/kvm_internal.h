#pragma once
// The pieces of KVM attention (docs/kvm.md) that prefill (kvm_forward.cpp), its backward
// (kvm_backward.cpp) and decode (kvm_decode.cpp) share: the state of one (batch, head), ln_s on
// rows, the state update of doc section 8 and the joint read-out of doc section 6. Each exists
// once, so decode reproduces prefill by construction (same update code, same inputs, same state).
// Everything here works on ONE (batch, head): rows are D floats apart.
#include "kernels/cpu/serial_gemm.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/kvm.h"

namespace kernels::cpu::kvm {

// What happened to a token (values match KvmTape::routing_kind and the fixtures' routing/kind).
enum Kind : int8_t { kWindow = 0, kInitial = 1, kAppend = 2, kMerge = 3 };

// first token of the window of a query chunk ending at n: the state covers exactly [0, bswa_begin)
inline int bswa_begin(int n, const KvmParams& p) {
  int ceil_n = (n + p.C - 1) / p.C * p.C;
  return std::max(0, ceil_n - p.W * p.C);
}

// One state read-out of the training schedule (doc section 7): queries [qb,qe) over the state
// (covering [0,wb)) and the window [wb,qe); then the update folds [wb,nwb) in (nwb == wb: none,
// always so after the last read-out, which nothing reads).
struct Step {
  int qb, qe, wb, nwb;
};
// Queries [0, F) before the steps use plain causal attention; chunk 0 ([0, m0)) is the initial state.
inline int causal_end(int T, const KvmParams& p) { return std::min(T, p.W * p.C); }
inline int initial_len(int T, const KvmParams& p) { return std::min(T, p.C); }
inline std::vector<Step> schedule(int T, const KvmParams& p) {
  std::vector<Step> steps;
  for (int qb = causal_end(T, p); qb < T; qb += p.C) {
    int qe = std::min(T, qb + p.C), wb = bswa_begin(qe, p);
    int nwb = qe == T ? wb : bswa_begin(std::min(T, qe + p.C), p);
    steps.push_back({qb, qe, wb, nwb});
  }
  return steps;
}

// Slots an update of n tokens appends (doc section 8: n_app = clamp(M* - M, 0, n)).
inline int n_appends(const KvmParams& p, int ctx_len, int avail, int M, int n) {
  return std::clamp(kvm_budget(p, ctx_len, avail, M) - M, 0, n);
}

inline void check_params(const KvmParams& p, int D) {
  if (p.C < 1 || p.W < 1) throw std::runtime_error("kvm: expected C >= 1 and W >= 1");
  if (p.R < 0 || p.R > D) throw std::runtime_error("kvm: expected 0 <= R <= D=" + std::to_string(D));
  if (p.S < 0) throw std::runtime_error("kvm: expected S >= 0 sink slots");
}

// Whether g multiplies a token's prepared key / value when it enters the state as `kind`.
// Appends and the initial chunk take "the gated key/value" of a merge, so the merge flags apply too.
inline bool gates_key(const KvmParams& p, Kind kind) {
  bool entry = kind == kMerge || (kind == kAppend && p.gate_appends) || (kind == kInitial && p.gate_initial_state);
  return entry && p.merge_gate_keys;
}
inline bool gates_value(const KvmParams& p, Kind kind) {
  bool entry = kind == kMerge || (kind == kAppend && p.gate_appends) || (kind == kInitial && p.gate_initial_state);
  return entry && p.merge_gate_values;
}

// The state of one (batch, head). The sums are double: the reversible backward subtracts again
// what the forward added, and in double that round trip loses ~1e-16, so it reproduces the
// forward's states to fp32 rounding (with fp32 sums d_tau_state differed by 3.7e-5 relative).
// Everything read from them (ln_s(s_k), the read values) is fp32.
struct State {
  int M = 0;
  std::vector<double> s_k;   // (M,D) sums of the (gated) prepared keys routed to each slot
  std::vector<double> s_v;   // (M,D) sums of the (gated) values
  std::vector<float> s_len;  // (M) vlens: norm of the founding value; otherwise the token count
  void resize(int m, int D) {
    M = m;
    s_k.resize((size_t)m * D);
    s_v.resize((size_t)m * D);
    s_len.resize(m);
  }
  size_t bytes() const { return (s_k.size() + s_v.size()) * sizeof(double) + s_len.size() * sizeof(float); }
};

// What the read-out and the routing need from a state: ks = ln_s(s_k) (no temperature) and the
// read value vs, with the statistics their backward needs.
struct Prepared {
  int M = 0;
  std::vector<float> ks;          // (M,D) ln_s(s_k)
  std::vector<float> mean, rstd;  // (M) ln_s statistics of s_k
  std::vector<float> vs;          // (M,D) s_v/|s_v|*s_len (vlens) or s_v/count
  std::vector<float> vnorm;       // (M) |s_v|
};

// xpad (n,D) = [0..0, k[R:D]] and kp (n,D) = ln_s(xpad), the prepared keys of doc section 4.
void prepare_keys(float* kp, float* xpad, const float* k, int n, int D, const float* w, const float* b,
                  const KvmParams& p);

// Appends n tokens (k, v, g rows) to the state as initial slots (doc section 7: chunk 0 copied in).
void add_initial(State& st, const float* k, const float* v, const float* g, int n, int D, const float* w,
                 const float* b, const KvmParams& p);

// Folds n tokens into the state (doc section 8). kind/slot (n) receive the routing.
void update(State& st, int8_t* kind, int* slot, const float* k, const float* v, const float* g, int n, int ctx_len,
            int avail, int D, const float* w, const float* b, const KvmParams& p);

// Removes an update again (reversible backward): subtracts the merged tokens' contributions and
// drops the slots appended after m_before. Recomputes the contributions from the inputs.
void undo_update(State& st, const int8_t* kind, const int* slot, const float* k, const float* v, const float* g,
                 int n, int m_before, int D, const float* w, const float* b, const KvmParams& p);

void prepare_state(Prepared& ps, const State& st, int D, const float* w, const float* b, const KvmParams& p);

// Gradients of ks and vs (M,D) back to the state sums: Gk, Gv (M,D), Glen (M) and ln_s's dw, db += .
void state_backward(float* Gk, float* Gv, float* Glen, float* dw, float* db, const float* dks, const float* dvs,
                    const State& st, const Prepared& ps, int D, const float* w, const KvmParams& p);

// Gradients of the state sums (Gk, Gv, Glen, indexed by slot) back to the n tokens that entered
// the state: dk (non-RoPE dims only, through ln_s), dv, dg, dw, db += . Window tokens get nothing.
void tokens_backward(float* dk, float* dv, float* dg, float* dw, float* db, const float* Gk, const float* Gv,
                     const float* Glen, const int8_t* kind, const int* slot, const float* k, const float* v,
                     const float* g, int n, int D, const float* w, const float* b, const KvmParams& p);

// Scratch of one read-out, reused across calls (grows only).
struct ReadoutScratch {
  std::vector<float> K, V;    // (M+nw,D) [ks*tau_state; k*tau_front], [vs; v]
  std::vector<float> S, dP;   // (nq,M+nw) scores -> probabilities; dP -> dS
  std::vector<float> dK, dV;  // (M+nw,D)
};

// out (nq,D) = softmax(q [Ks;Kwin]^T / sqrt(D) + mask) [Vs;Vwin] (doc section 6). Query i sits at
// position q0+i; window rows k, v (nw,D) are positions [w0, w0+nw); query i sees window key j iff
// w0+j <= q0+i and every state slot. ps.M = 0: plain causal attention over the window.
void readout_forward(float* out, const float* q, int nq, int q0, const float* k, const float* v, int w0, int nw,
                     const Prepared& ps, float tf, float ts, int D, ReadoutScratch& sc);
// Its backward: dq, dk, dv (window rows) += ; dks, dvs (M,D) overwritten (gradient of ln_s(s_k)
// and of vs); dtf, dts += .
void readout_backward(float* dq, float* dk, float* dv, float* dks, float* dvs, float* dtf, float* dts,
                      const float* dout, const float* q, int nq, int q0, const float* k, const float* v, int w0,
                      int nw, const Prepared& ps, float tf, float ts, int D, ReadoutScratch& sc);


}  // namespace kernels::cpu::kvm

// The tape's contents (kvm_forward writes, kvm_backward reads).
struct kernels::KvmTape::Impl {
  int B = 0, H = 0, T = 0, D = 0;
  bool snapshots = false;   // copy of KvmTape::snapshots at forward time
  std::vector<int> m_after;  // (U) slots after each update
  struct Head {
    cpu::kvm::State final_state;
    std::vector<float> final_k, final_v;   // (M,D) fp32 copies of final_state's sums, to read back
    std::vector<int8_t> kind;              // (T)
    std::vector<int> slot;                 // (T)
    std::vector<cpu::kvm::State> states;   // snapshots only: the state each state read-out saw
  };
  std::vector<Head> heads;  // (B*H)
};
