// KVM prefill / training forward (docs/kvm.md section 7): per (batch, head), one OpenMP task that
// copies chunk 0 into the state, answers queries [0, F) with plain causal attention, then walks
// the query chunks: read-out over [state; window], then fold the chunk that leaves the window into
// the state. The tape keeps the routing and the final state (plus, on request, every state read).
#include "kernels/cpu/kvm_internal.h"

namespace kernels::cpu {

void kvm_forward(float* out, KvmTape& tape, const float* q, const float* k, const float* v, const float* g,
                 const float* ln_s_weight, const float* ln_s_bias, const float* tau_front, const float* tau_state,
                 int B, int H, int T, int D, const KvmParams& p) {
  using namespace kvm;
  check_params(p, D);
  KvmTape::Impl& tp = *tape.impl;
  tp.B = B, tp.H = H, tp.T = T, tp.D = D;
  tp.snapshots = tape.snapshots;
  tp.heads.resize((size_t)B * H);
  const std::vector<Step> steps = schedule(T, p);
  int F = causal_end(T, p), m0 = initial_len(T, p);
  tp.m_after.clear();
  for (const Step& s : steps) {  // the budget depends on (ctx, avail, M) only: the same for every head
    if (s.nwb == s.wb) continue;
    int M = tp.m_after.empty() ? m0 : tp.m_after.back();
    tp.m_after.push_back(M + n_appends(p, s.qe, s.nwb, M, s.nwb - s.wb));
  }
#pragma omp parallel
  {
    ReadoutScratch sc;
    Prepared ps, none;  // none: no state, for the causal part
#pragma omp for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++) {
      for (int h = 0; h < H; h++) {
        size_t off = ((size_t)b * H + h) * T;  // token offset of (b, h)
        const float *qh = q + off * D, *kh = k + off * D, *vh = v + off * D, *gh = g + off;
        float* oh = out + off * D;
        float tf = p.head_temps ? tau_front[h] : 1.0f, ts = p.head_temps ? tau_state[h] : 1.0f;
        KvmTape::Impl::Head& ht = tp.heads[(size_t)b * H + h];
        ht.kind.assign(T, kWindow);
        ht.slot.assign(T, -1);
        ht.states.clear();
        State& st = ht.final_state;
        st.resize(0, D);
        add_initial(st, kh, vh, gh, m0, D, ln_s_weight, ln_s_bias, p);
        for (int t = 0; t < m0; t++) ht.kind[t] = kInitial, ht.slot[t] = t;
        readout_forward(oh, qh, F, 0, kh, vh, 0, F, none, tf, ts, D, sc);
        for (const Step& s : steps) {
          prepare_state(ps, st, D, ln_s_weight, ln_s_bias, p);
          if (tp.snapshots) ht.states.push_back(st);
          readout_forward(oh + (size_t)s.qb * D, qh + (size_t)s.qb * D, s.qe - s.qb, s.qb, kh + (size_t)s.wb * D,
                          vh + (size_t)s.wb * D, s.wb, s.qe - s.wb, ps, tf, ts, D, sc);
          if (s.nwb > s.wb)
            update(st, ht.kind.data() + s.wb, ht.slot.data() + s.wb, kh + (size_t)s.wb * D, vh + (size_t)s.wb * D,
                   gh + s.wb, s.nwb - s.wb, s.qe, s.nwb, D, ln_s_weight, ln_s_bias, p);
        }
        ht.final_k.assign(st.s_k.begin(), st.s_k.end());
        ht.final_v.assign(st.s_v.begin(), st.s_v.end());
      }
    }
  }
}

}  // namespace kernels::cpu
