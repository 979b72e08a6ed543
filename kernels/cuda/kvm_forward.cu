// KVM prefill / training forward on the GPU (docs/kvm.md section 7), the CUDA twin of
// kernels/cpu/kvm_forward.cpp. The host walks the chunk schedule both twins follow
// (kernels/kvm_rules.h) once for all B*H heads: chunk 0 is copied into the states, queries [0, F)
// get plain causal attention, then each query chunk is read out over [state; window] and the chunk
// that leaves the window is folded in. Every shape is known on the host (the budget depends on
// positions only), so each step is a few launches over all heads. The tape's device part keeps the
// routing, the final states and, on request, every state read; its host part only the slot counts
// until kvm_tape_to_host.
#include <stdexcept>
#include <vector>

#include "kernels/cuda/kvm_internal.cuh"

namespace kernels::cuda {

namespace kvm {

Plan plan(int T, const KvmParams& p) {
  Plan pl;
  pl.steps = schedule(T, p);
  pl.F = causal_end(T, p), pl.m0 = initial_len(T, p);
  pl.rows = pl.F, pl.scores = (size_t)pl.F * pl.F;
  int M = pl.m0;
  for (const Step& s : pl.steps) {
    size_t N = (size_t)M + s.qe - s.wb;
    pl.rows = std::max(pl.rows, N);
    pl.scores = std::max(pl.scores, (size_t)(s.qe - s.qb) * N);
    if (s.nwb == s.wb) continue;
    int n = s.nwb - s.wb;
    M += n_appends(p, s.qe, s.nwb, M, n);
    pl.m_after.push_back(M);
    pl.scores = std::max(pl.scores, (size_t)n * M);  // the routing's scores against the grown state
  }
  pl.cap = M;
  return pl;
}

}  // namespace kvm

void kvm_forward(float* out, KvmTape& tape, const float* q, const float* k, const float* v, const float* g,
                 const float* ln_s_weight, const float* ln_s_bias, const float* tau_front, const float* tau_state,
                 int B, int H, int T, int D, const KvmParams& p) {
  using namespace kvm;
  kvm::check_params(p, D);
  const Plan pl = plan(T, p);
  // the host part: the slot counts; B = H = T = D = 0 until kvm_tape_to_host, so that
  // cpu::kvm_backward refuses it instead of reading stale routing
  KvmTape::Impl& tp = *tape.impl;
  tp.B = tp.H = tp.T = tp.D = 0;
  tp.snapshots = false;
  tp.heads.clear();
  tp.m_after = pl.m_after;
  if (!tape.device) tape.device = {new KvmTape::Device, [](KvmTape::Device* d) { delete d; }};
  KvmTape::Device& td = *tape.device;
  td.B = B, td.H = H, td.T = T, td.D = D, td.cap = pl.cap, td.snapshots = tape.snapshots;
  int BH = B * H;
  if (BH == 0 || T == 0) return;

  size_t tokens = (size_t)BH * T;
  Routing route{td.kind.reserve(tokens), td.slot.reserve(tokens), (size_t)T};
  cuda_check(cudaMemsetAsync(route.kind, kWindow, tokens * sizeof(int8_t)));
  cuda_check(cudaMemsetAsync(route.slot, 0xff, tokens * sizeof(int)));  // -1: no slot
  StateView st = td.final_state.reserve(BH, pl.cap, D);
  if (td.snapshots) td.states.reserve((int)pl.steps.size() * BH, pl.cap, D);
  PreparedView ps = workspace().prepared.reserve(BH, pl.cap, D);
  reserve_readout(BH, D, pl.rows, pl.scores, false);
  const float* tf = p.head_temps ? tau_front : nullptr;
  const float* ts = p.head_temps ? tau_state : nullptr;

  add_initial(st, route, {k, v, g, (size_t)T}, BH, pl.m0, 0, D, ln_s_weight, ln_s_bias, p);
  readout_forward(out, q,
                  {.BH = BH, .H = H, .D = D, .nq = pl.F, .q0 = 0, .q_ld = (size_t)T, .k = k, .v = v, .w0 = 0,
                   .nw = pl.F, .kv_ld = (size_t)T, .ps = ps, .M = 0, .tau_front = tf, .tau_state = ts});
  int M = pl.m0;
  for (size_t i = 0; i < pl.steps.size(); i++) {
    const kvm::Step& s = pl.steps[i];
    size_t qo = (size_t)s.qb * D, wo = (size_t)s.wb * D;
    prepare_state(ps, st, BH, 0, M, D, ln_s_weight, ln_s_bias, p, false);
    if (td.snapshots) copy_state(td.snapshot((int)i), st, BH, M, D);
    readout_forward(out + qo, q + qo,
                    {.BH = BH, .H = H, .D = D, .nq = s.qe - s.qb, .q0 = s.qb, .q_ld = (size_t)T, .k = k + wo,
                     .v = v + wo, .w0 = s.wb, .nw = s.qe - s.wb, .kv_ld = (size_t)T, .ps = ps, .M = M,
                     .tau_front = tf, .tau_state = ts});
    if (s.nwb > s.wb)
      M = update(st, ps, {route.kind + s.wb, route.slot + s.wb, (size_t)T}, {k + wo, v + wo, g + s.wb, (size_t)T},
                 BH, s.nwb - s.wb, M, s.qe, s.nwb, D, ln_s_weight, ln_s_bias, p);
  }
}

void kvm_tape_to_host(KvmTape& tape) {
  if (!tape.device) throw std::runtime_error("kvm_tape_to_host: expected the tape of a cuda::kvm_forward");
  const KvmTape::Device& td = *tape.device;
  KvmTape::Impl& tp = *tape.impl;
  size_t BH = (size_t)td.B * td.H, T = td.T, D = td.D, cap = td.cap;
  std::vector<int8_t> kind(BH * T);
  std::vector<int> slot(BH * T);
  std::vector<double> s_k(BH * cap * D), s_v(BH * cap * D);
  std::vector<float> s_len(BH * cap);
  if (BH * T > 0) {
    cuda_check(cudaMemcpy(kind.data(), td.kind.get(), kind.size() * sizeof(int8_t), cudaMemcpyDeviceToHost));
    cuda_check(cudaMemcpy(slot.data(), td.slot.get(), slot.size() * sizeof(int), cudaMemcpyDeviceToHost));
    cuda_check(cudaMemcpy(s_k.data(), td.final_state.s_k.get(), s_k.size() * sizeof(double), cudaMemcpyDeviceToHost));
    cuda_check(cudaMemcpy(s_v.data(), td.final_state.s_v.get(), s_v.size() * sizeof(double), cudaMemcpyDeviceToHost));
    cuda_check(cudaMemcpy(s_len.data(), td.final_state.s_len.get(), s_len.size() * sizeof(float),
                          cudaMemcpyDeviceToHost));
  }
  tp.B = td.B, tp.H = td.H, tp.T = td.T, tp.D = td.D;
  tp.snapshots = false;  // the host copy is walked back from its final state
  tp.heads.resize(BH);
  for (size_t bh = 0; bh < BH; bh++) {
    KvmTape::Impl::Head& hd = tp.heads[bh];
    hd.kind.assign(kind.begin() + bh * T, kind.begin() + (bh + 1) * T);
    hd.slot.assign(slot.begin() + bh * T, slot.begin() + (bh + 1) * T);
    hd.states.clear();
    kvm::State& st = hd.final_state;
    st.resize((int)cap, (int)D);
    std::copy_n(s_k.begin() + bh * cap * D, cap * D, st.s_k.begin());
    std::copy_n(s_v.begin() + bh * cap * D, cap * D, st.s_v.begin());
    std::copy_n(s_len.begin() + bh * cap, cap, st.s_len.begin());
    hd.final_k.assign(st.s_k.begin(), st.s_k.end());
    hd.final_v.assign(st.s_v.begin(), st.s_v.end());
  }
}

}  // namespace kernels::cuda
