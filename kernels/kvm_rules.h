#pragma once
// The rules of KVM attention (docs/kvm.md) that both twins follow, kernels/cpu/kvm_*.cpp and
// kernels/cuda/kvm_*.cu alike: the chunk schedule, the budget (kernels::kvm_budget), the checks of
// the settings, which entries g gates, and the host part of a tape (the routing and the final state
// the accessors of KvmTape read, which cuda::kvm_tape_to_host fills too). Backend-neutral: plain
// host C++, built as its own library (kvmtrain_kvm_rules) that the CPU and the CUDA kernels both
// link, so that neither twin depends on the other.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/kvm.h"

namespace kernels::kvm {

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

// The state of one (batch, head) on the host. The sums are double: the reversible backward
// subtracts again what the forward added, and in double that round trip loses ~1e-16, so it
// reproduces the forward's states to fp32 rounding (with fp32 sums d_tau_state differed by 3.7e-5
// relative). Everything read from them (ln_s(s_k), the read values) is fp32.
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

}  // namespace kernels::kvm

// The tape's host part: cpu::kvm_forward writes it and cpu::kvm_backward reads it; cuda::kvm_forward
// sets only m_after (and B = H = T = D = 0, which cpu::kvm_backward refuses) until
// cuda::kvm_tape_to_host fills the rest from the device part.
struct kernels::KvmTape::Impl {
  int B = 0, H = 0, T = 0, D = 0;
  bool snapshots = false;   // copy of KvmTape::snapshots at forward time
  std::vector<int> m_after;  // (U) slots after each update
  struct Head {
    kvm::State final_state;
    std::vector<float> final_k, final_v;   // (M,D) fp32 copies of final_state's sums, to read back
    std::vector<int8_t> kind;              // (T)
    std::vector<int> slot;                 // (T)
    std::vector<kvm::State> states;        // snapshots only: the state each state read-out saw
  };
  std::vector<Head> heads;  // (B*H)
};
