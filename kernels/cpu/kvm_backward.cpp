// KVM backward (docs/kvm.md section 11): per (batch, head), the read-outs in reverse order. The
// state a read-out saw is a sum of token contributions, so its gradient (Gk, Gv, Glen per slot)
// accumulates over every later read-out and is handed to a token when the walk passes the update
// that added it. Routing and the append selection are constants from the tape. The states come
// from the tape's snapshots, or from the final state by undoing each update (reversible, the
// default): the undo recomputes the merged contributions and subtracts them from the double
// state sums (kvm_internal.h), which gives the snapshots' gradients bit for bit in the tests
// (fp32 sums were off by up to 3.7e-5 relative in d_tau_state, 3.5e-6 elsewhere).
#include "kernels/cpu/kvm_internal.h"

namespace kernels::cpu {

void kvm_backward(float* dq, float* dk, float* dv, float* dg, float* d_ln_s_weight, float* d_ln_s_bias,
                  float* d_tau_front, float* d_tau_state, const float* dout, const KvmTape& tape, const float* q,
                  const float* k, const float* v, const float* g, const float* ln_s_weight, const float* ln_s_bias,
                  const float* tau_front, const float* tau_state, int B, int H, int T, int D, const KvmParams& p) {
  using namespace kvm;
  const KvmTape::Impl& tp = *tape.impl;
  if (tp.B != B || tp.H != H || tp.T != T || tp.D != D)
    throw std::runtime_error("kvm_backward: expected the tape of a kvm_forward with the same B, H, T, D");
  const std::vector<Step> steps = schedule(T, p);
  int F = causal_end(T, p), m0 = initial_len(T, p);
  // per (b,h) partial sums of the shared parameters' gradients, reduced in a fixed order below
  std::vector<float> part_w((size_t)B * H * D, 0.0f), part_b((size_t)B * H * D, 0.0f);
  std::vector<float> part_tf((size_t)B * H, 0.0f), part_ts((size_t)B * H, 0.0f);
#pragma omp parallel
  {
    ReadoutScratch sc;
    Prepared ps, none;
    State st;
    std::vector<float> Gk, Gv, Glen, dks, dvs;  // (M,D), (M,D), (M), (M,D), (M,D)
#pragma omp for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++) {
      for (int h = 0; h < H; h++) {
        size_t bh = (size_t)b * H + h, off = bh * T;
        const float *qh = q + off * D, *kh = k + off * D, *vh = v + off * D, *gh = g + off, *doh = dout + off * D;
        float *dqh = dq + off * D, *dkh = dk + off * D, *dvh = dv + off * D, *dgh = dg + off;
        float *dw = part_w.data() + bh * D, *db = part_b.data() + bh * D;
        float tf = p.head_temps ? tau_front[h] : 1.0f, ts = p.head_temps ? tau_state[h] : 1.0f;
        float *dtf = &part_tf[bh], *dts = &part_ts[bh];
        const KvmTape::Impl::Head& ht = tp.heads[bh];
        const int8_t* kind = ht.kind.data();
        const int* slot = ht.slot.data();
        st = ht.final_state;
        size_t MD = (size_t)st.M * D;
        Gk.assign(MD, 0.0f), Gv.assign(MD, 0.0f), Glen.assign(st.M, 0.0f);
        dks.resize(MD), dvs.resize(MD);
        int u = (int)tp.m_after.size();  // updates not yet walked back
        for (int i = (int)steps.size() - 1; i >= 0; i--) {
          const Step& s = steps[i];
          if (s.nwb > s.wb) {  // the update after this read-out: its tokens take the gradient of what came later
            int n = s.nwb - s.wb;
            tokens_backward(dkh + (size_t)s.wb * D, dvh + (size_t)s.wb * D, dgh + s.wb, dw, db, Gk.data(), Gv.data(),
                            Glen.data(), kind + s.wb, slot + s.wb, kh + (size_t)s.wb * D, vh + (size_t)s.wb * D,
                            gh + s.wb, n, D, ln_s_weight, ln_s_bias, p);
            u--;
            int m_before = u > 0 ? tp.m_after[u - 1] : m0;
            if (tp.snapshots)
              st = ht.states[i];
            else
              undo_update(st, kind + s.wb, slot + s.wb, kh + (size_t)s.wb * D, vh + (size_t)s.wb * D, gh + s.wb, n,
                          m_before, D, ln_s_weight, ln_s_bias, p);
          }
          prepare_state(ps, st, D, ln_s_weight, ln_s_bias, p);
          readout_backward(dqh + (size_t)s.qb * D, dkh + (size_t)s.wb * D, dvh + (size_t)s.wb * D, dks.data(),
                           dvs.data(), dtf, dts, doh + (size_t)s.qb * D, qh + (size_t)s.qb * D, s.qe - s.qb, s.qb,
                           kh + (size_t)s.wb * D, vh + (size_t)s.wb * D, s.wb, s.qe - s.wb, ps, tf, ts, D, sc);
          state_backward(Gk.data(), Gv.data(), Glen.data(), dw, db, dks.data(), dvs.data(), st, ps, D, ln_s_weight, p);
        }
        if (!steps.empty())  // the initial chunk was read by every state read-out
          tokens_backward(dkh, dvh, dgh, dw, db, Gk.data(), Gv.data(), Glen.data(), kind, slot, kh, vh, gh, m0, D,
                          ln_s_weight, ln_s_bias, p);
        readout_backward(dqh, dkh, dvh, nullptr, nullptr, dtf, dts, doh, qh, F, 0, kh, vh, 0, F, none, tf, ts, D, sc);
      }
    }
  }
  for (size_t bh = 0; bh < (size_t)B * H; bh++) {
    for (int d = 0; d < D; d++) {
      d_ln_s_weight[d] += part_w[bh * D + d];
      d_ln_s_bias[d] += part_b[bh * D + d];
    }
    if (p.head_temps) {
      d_tau_front[bh % H] += part_tf[bh];
      d_tau_state[bh % H] += part_ts[bh];
    }
  }
}

}  // namespace kernels::cpu
