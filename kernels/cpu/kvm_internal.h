#pragma once
// The pieces of KVM attention (docs/kvm.md) that prefill (kvm_forward.cpp), its backward
// (kvm_backward.cpp) and decode (kvm_decode.cpp) share: ln_s on rows, the state update of doc
// section 8 and the joint read-out of doc section 6, over the State and the schedule that the CUDA
// twin shares too (kernels/kvm_rules.h). Each exists once, so decode reproduces prefill by
// construction (same update code, same inputs, same state). Everything here works on ONE
// (batch, head): rows are D floats apart.
#include "kernels/cpu/serial_gemm.h"

#include <cstdint>
#include <vector>

#include "kernels/kvm.h"
#include "kernels/kvm_rules.h"

namespace kernels::cpu::kvm {

using namespace kernels::kvm;  // the schedule, budget, gating and State both twins share

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
