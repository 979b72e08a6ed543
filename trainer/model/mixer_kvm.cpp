// A KVM layer's token mixer: the glue from the block's q, k, v (after qk-LayerNorm and partial
// RoPE, in the (B,T,3C) qkv rows) to the KVM core of kernels/kvm.h, which works on (B,H,T,D):
//   q, k, v -> permute to (B,H,T,D)
//   g = 1 + elu(W_g x)   (x: the block's normed input ln_1(residual), before any token shift)
//   out = kvm_forward(q, k, v, g; ln_s, tau_front, tau_state)
//   out -> permute back to (B,T,C), then the block's output projection.
// Under tensor parallelism a rank runs its own heads only (NHl = NH/TP of them, Ca = C/TP wide):
// its rows of W_g, its tau_front/tau_state entries and its heads' states; ln_s (shared by the
// heads) gets this rank's part of its gradient, summed over the ranks in block_backward.
// The permutations are the backend's split_heads / merge_heads kernels.
#include <vector>

#include "common/unreachable.h"
#include "kernels/kvm.h"
#include "trainer/model/model.h"

kernels::KvmBudget to_kernels(config::KvmBudget budget) {
  switch (budget) {
    case config::KvmBudget::fixed: return kernels::KvmBudget::fixed;
    case config::KvmBudget::power_law: return kernels::KvmBudget::power_law;
    case config::KvmBudget::saturating: return kernels::KvmBudget::saturating;
  }
  unreachable();
}

struct Model::KvmLayer {
  kernels::KvmParams params;
  kernels::KvmTape tape;
  std::unique_ptr<kernels::KvmCache> cache;  // decode
};

void Model::KvmLayerDeleter::operator()(KvmLayer* p) const { delete p; }

void Model::kvm_make(int l) {
  const auto& c = cfg_.kvm;
  kernels::KvmParams p;
  p.C = c.chunk;
  p.W = c.window_chunks;
  p.S = c.sink;
  p.R = lay_.layers[l].rope_dims;  // the rotated dims are zeroed before a key enters the state
  p.budget = to_kernels(c.budget);
  p.min_len = c.min_len;
  p.power_f = c.power_f;
  p.power_e = c.power_e;
  p.sat_n = c.sat_n;
  p.max_slots = c.max_slots ? c.max_slots : 1 << 30;
  p.vlens = c.vlens;
  p.head_temps = c.head_temps;
  p.merge_gate_keys = c.merge_gate_keys;
  p.merge_gate_values = c.merge_gate_values;
  p.gate_appends = c.gate_appends;
  p.gate_initial_state = c.gate_initial_state;
  kvm_[l].reset(new KvmLayer{p, kernels::KvmTape(), nullptr});
}

void Model::kvm_forward(int l, const Pass& p) {
  const int B = p.B, T = p.T, C = cfg_.d_model, NH = NHl_, hs = C / cfg_.n_head, Ca = Ca_, BT = B * T;
  const LayerParams& w = lay_.layers[l];
  const LayerActs& x = p.acts.layers[l];
  KvmLayer& kv = *kvm_[l];
  const float* qkvp = x.qkvm;
  // merge gate: gpre (B,T,NH), g = 1 + elu(gpre) as (B,NH,T) (elementwise, so after the permutation);
  // with GQA one gate per key/value head, repeated for its query heads (their states are the same)
  if (gqa()) {
    linear_forward(x.gkv, x.ln1, w.gatew, Param{}, BT, C, NKVl_);
    const size_t f = sizeof(float);
    for (int h = 0; h < NH; h++) be_.copy_rows(x.gpre + h, NH * f, x.gkv + h / (NH / NKVl_), NKVl_ * f, f, size_t(BT));
  } else {
    linear_forward(x.gpre, x.ln1, w.gatew, Param{}, BT, C, NH);
  }
  if (p.decode) {  // one token: (1,1,NH) rows are already (H,D) and (H)
    if (!kv.cache || p.pos0 == 0) {
      kv.cache = std::make_unique<kernels::KvmCache>(NH, hs, kv.params);
      be_.kvm_decode_init(*kv.cache, NH, hs);
    }
    be_.elu_gate_forward(x.g, x.gpre, NH);
    be_.kvm_decode_step(x.atty, *kv.cache, qkvp, qkvp + Ca, qkvp + 2 * Ca, x.g, P(w.lnsw), P(w.lnsb), P(w.tau_front),
                        P(w.tau_state), kv.params);
    return;
  }
  be_.split_heads(x.qh, qkvp, B, T, NH, hs, 3 * Ca);
  be_.split_heads(x.kh, qkvp + Ca, B, T, NH, hs, 3 * Ca);
  be_.split_heads(x.vh, qkvp + 2 * Ca, B, T, NH, hs, 3 * Ca);
  be_.split_heads(x.g, x.gpre, B, T, NH, 1, NH);
  be_.elu_gate_forward(x.g, x.g, BT * NH);
  be_.kvm_forward(x.outh, kv.tape, x.qh, x.kh, x.vh, x.g, P(w.lnsw), P(w.lnsb), P(w.tau_front), P(w.tau_state), B, NH,
                  T, hs, kv.params);
  be_.merge_heads(x.atty, x.outh, B, T, NH, hs, Ca, 0);
}

void Model::kvm_backward(int l, const float* datty, float* dqkvp, float* dln1) {
  const int B = B_, T = T_, C = cfg_.d_model, NH = NHl_, hs = C / cfg_.n_head, Ca = Ca_, BT = B * T;
  const size_t n = size_t(BT) * Ca;
  const LayerParams& w = lay_.layers[l];
  const LayerActs& x = acts_.layers[l];
  KvmLayer& kv = *kvm_[l];
  float *dq = s_.dqh.data(), *dk = s_.dkh.data(), *dv = s_.dvh.data(), *dout = s_.douth.data();
  float *dg = s_.dg.data(), *dgbt = s_.dgbt.data(), *dgpre = s_.dgpre.data();
  for (float* p : {dq, dk, dv}) be_.zero(p, n * sizeof(float));
  be_.zero(dg, size_t(BT) * NH * sizeof(float));
  be_.zero(dgpre, size_t(BT) * NH * sizeof(float));
  be_.split_heads(dout, datty, B, T, NH, hs, Ca);
  be_.kvm_backward(dq, dk, dv, dg, partial_grad(w.lnsw, kRedLnsw), partial_grad(w.lnsb, kRedLnsb), G(w.tau_front),
                   G(w.tau_state), dout, kv.tape, x.qh, x.kh, x.vh, x.g, P(w.lnsw), P(w.lnsb),
                   P(w.tau_front), P(w.tau_state), B, NH, T, hs, kv.params);
  be_.merge_heads(dqkvp, dq, B, T, NH, hs, 3 * Ca, 1);
  be_.merge_heads(dqkvp + Ca, dk, B, T, NH, hs, 3 * Ca, 1);
  be_.merge_heads(dqkvp + 2 * Ca, dv, B, T, NH, hs, 3 * Ca, 1);
  // back through g = 1 + elu(W_g ln1)
  be_.merge_heads(dgbt, dg, B, T, NH, 1, NH, 0);
  be_.elu_gate_backward(dgpre, x.gpre, dgbt, BT * NH);
  if (gqa()) {  // the repeats' gradients summed per key/value head
    const int G = NH / NKVl_;
    float* dgkv = s_.dgkv.data();
    be_.zero(dgkv, size_t(BT) * NKVl_ * sizeof(float));
    for (int h = 0; h < NH; h++)
      be_.axpby_rows(dgkv + h / G, dgpre + h, 1.0f, 1.0f, size_t(BT), 1, size_t(NKVl_), size_t(NH));
    return linear_backward(dln1, Dinp::accumulate, w.gatew, Param{}, dgkv, x.ln1, BT, C, NKVl_);
  }
  linear_backward(dln1, Dinp::accumulate, w.gatew, Param{}, dgpre, x.ln1, BT, C, NH);
}

size_t Model::kvm_cache_bytes(int l) const {
  const KvmLayer* kv = kvm_[l].get();
  return kv && kv->cache ? kv->cache->bytes() : 0;
}
