// One pre-LayerNorm block, forward (a training pass, or one token of a decode) and backward:
//   residual2 = residual  + s * proj(mixer(qkv_prep(W_qkv shift(ln_1(residual)))))
//   residual3 = residual2 + s * W_out act(W_fc shift(ln_2(residual2)))
// s = model.residual_scale; shift = the token shift (identity when off); act = GELU or ReLU^2;
// qkv_prep = value residual on v, qk-LayerNorm and partial RoPE on q and k; mixer = causal
// attention (window 0), sliding-window attention, or KVM (mixer_kvm.cpp).
//
// Decode (a Pass with caches) runs the same forward on one token at position pos0: attention
// reads and extends its KV cache (attention_decode), KVM its state (mixer_kvm.cpp), and the
// token shift starts from the previous token's row instead of zero.
//
// Tensor parallel (TP > 1): qkv, the mixer and the MLP's hidden layer hold this rank's heads and
// 4C/TP hidden units only (Ca = C/TP, NHl = NH/TP, F = 4C/TP below; all equal to the full sizes
// with TP = 1). Forward: one all-reduce per sub-block, of the row-parallel output projection's
// partial sums. Backward: one all-reduce per sub-block, of d(LayerNorm output) (partial: this
// rank's heads / hidden units only) together with the partial gradients of the replicated
// parameters that act per head (qk-norm, ln_s) or before the column-parallel projection (token
// shift), packed into tpred_.
#include "trainer/model/decode_cache.h"
#include "trainer/model/model.h"

void Model::mixer_forward(int l, const Pass& p) {
  const LayerParams& w = lay_.layers[l];
  const LayerActs& x = p.acts.layers[l];
  switch (w.mixer) {
    case Mixer::kvm:
      return kvm_forward(l, p);
    case Mixer::attn:
    case Mixer::swa:
      if (p.decode) {
        DecodeCache::Layer& c = p.decode->layers[l];
        return be_.attention_decode(x.atty, c.k.data(), c.v.data(), x.qkvp, p.B, Ca_, NHl_, p.pos0, c.cap, w.window, 0);
      }
      return be_.attention_forward(x.atty, x.lse, x.qkvp, p.B, p.T, Ca_, NHl_, w.window, 0);
  }
}

void Model::mixer_backward(int l, float* datty, float* dqkvp, float* dln1) {
  const LayerParams& w = lay_.layers[l];
  const LayerActs& x = acts_.layers[l];
  switch (w.mixer) {
    case Mixer::kvm:
      return kvm_backward(l, datty, dqkvp, dln1);
    case Mixer::attn:
    case Mixer::swa:
      return be_.attention_backward(dqkvp, datty, x.qkvp, x.atty, x.lse, B_, T_, Ca_, NHl_, w.window, 0);
  }
}

void Model::token_shift(float* out, const float* inp, Param mix, const Pass& p, DeviceBuffer* prev) {
  const int C = cfg_.d_model;
  be_.token_shift_forward(out, inp, prev ? prev->data() : nullptr, P(mix), p.B, p.T, C);
  // decode: this token's row is the next one's previous row
  if (prev) be_.copy(prev->data(), inp + size_t(p.T - 1) * C, size_t(C) * sizeof(float));
}

void Model::block_forward(int l, const float* residual, const Pass& p) {
  const int B = p.B, T = p.T, C = cfg_.d_model, hs = C / cfg_.n_head, BT = B * T;
  const int Ca = Ca_, NHl = NHl_, F = Fl_;
  const float s = float(cfg_.residual_scale), base = float(cfg_.rope_base);
  const kernels::RopeVariant rope = kernels::RopeVariant::kvmtrain;
  const LayerParams& w = lay_.layers[l];
  const LayerActs& x = p.acts.layers[l];
  DecodeCache::Layer* cache = p.decode ? &p.decode->layers[l] : nullptr;

  // ---- attention sub-block ----
  be_.layernorm_forward(x.ln1, x.ln1_mean, x.ln1_rstd, residual, P(w.ln1w), P(w.ln1b), BT, C);
  if (cfg_.token_shift) token_shift(x.xa, x.ln1, w.shift_att, p, cache ? &cache->prev_att : nullptr);
  linear_forward(x.qkv, x.xa, w.qkvw, w.qkvb, BT, C, 3 * Ca);
  const size_t f = sizeof(float);
  if (cfg_.value_residual && l == 0)  // v_0: the v columns of layer 0's qkv rows
    be_.copy_rows(p.acts.v0, Ca * f, x.qkv + 2 * Ca, 3 * Ca * f, Ca * f, size_t(BT));
  if (qkv_processed(l)) {
    float* qkvp = x.qkvp;
    be_.copy(qkvp, x.qkv, size_t(BT) * 3 * Ca * f);
    if (cfg_.value_residual && l > 0)  // v_l = (v_l + v_0) / 2
      be_.axpby_rows(qkvp + 2 * Ca, p.acts.v0, 0.5f, 0.5f, size_t(BT), Ca, size_t(3 * Ca), size_t(Ca));
    if (cfg_.qk_norm) {
      be_.head_layernorm_forward(qkvp, x.qn_mean, x.qn_rstd, x.qkv, P(w.qnw), P(w.qnb), BT, NHl, hs, 3 * Ca);
      be_.head_layernorm_forward(qkvp + Ca, x.kn_mean, x.kn_rstd, x.qkv + Ca, P(w.knw), P(w.knb), BT, NHl, hs, 3 * Ca);
    }
    if (w.rope_dims) {
      be_.rope_forward(qkvp, qkvp, B, T, NHl, hs, 3 * Ca, w.rope_dims, base, p.pos0, rope);
      be_.rope_forward(qkvp + Ca, qkvp + Ca, B, T, NHl, hs, 3 * Ca, w.rope_dims, base, p.pos0, rope);
    }
  }
  mixer_forward(l, p);
  // the projection lands in residual3's buffer, free until the MLP writes it
  row_parallel_forward(x.residual3, x.atty, w.projw, w.projb, BT, Ca);
  be_.scaled_residual_forward(x.residual2, residual, x.residual3, s, BT * C);

  // ---- MLP sub-block ----
  be_.layernorm_forward(x.ln2, x.ln2_mean, x.ln2_rstd, x.residual2, P(w.ln2w), P(w.ln2b), BT, C);
  if (cfg_.token_shift) token_shift(x.xm, x.ln2, w.shift_mlp, p, cache ? &cache->prev_mlp : nullptr);
  switch (cfg_.mlp) {
    case config::Mlp::gelu:  // one fused kernel where the backend has an epilogue for it (cuBLASLt)
      linear_gelu_forward(x.fch_act, x.fch, x.xm, w.fcw, w.fcb, BT, C, F);
      break;
    case config::Mlp::relu2:
      linear_forward(x.fch, x.xm, w.fcw, w.fcb, BT, C, F);
      be_.relu2_forward(x.fch_act, x.fch, BT * F);
      break;
  }
  row_parallel_forward(x.residual3, x.fch_act, w.fcprojw, w.fcprojb, BT, F);
  be_.scaled_residual_forward(x.residual3, x.residual2, x.residual3, s, BT * C);
}

// Back through the q/k/v preparation (value residual, qk-LayerNorm, RoPE) of layer l: from dqkvp,
// the gradient of the prepared rows, to that of the projection's rows (dqkvp itself when nothing
// applies); v_0's share goes to s_.dv0.
const float* Model::qkv_prep_backward(int l, float* dqkvp) {
  const int BT = B_ * T_, C = cfg_.d_model, hs = C / cfg_.n_head, Ca = Ca_, NHl = NHl_;
  const size_t na = size_t(BT) * Ca;
  const float base = float(cfg_.rope_base);
  const kernels::RopeVariant rope = kernels::RopeVariant::kvmtrain;
  const LayerParams& w = lay_.layers[l];
  const LayerActs& x = acts_.layers[l];
  auto zero = [&](float* p, size_t count) { be_.zero(p, count * sizeof(float)); };
  float* dqkv = dqkvp;
  if (qkv_processed(l)) {
    dqkv = s_.dqkv.data();
    zero(dqkv, na * 3);
    // q and k: back through RoPE, then through qk-LayerNorm
    const float* dqk = dqkvp;
    if (w.rope_dims) {
      float* target = cfg_.qk_norm ? s_.dq3.data() : dqkv;
      if (cfg_.qk_norm) zero(target, na * 3);
      be_.rope_backward(target, dqkvp, B_, T_, NHl, hs, 3 * Ca, w.rope_dims, base, 0, rope);
      be_.rope_backward(target + Ca, dqkvp + Ca, B_, T_, NHl, hs, 3 * Ca, w.rope_dims, base, 0, rope);
      dqk = target;
    }
    if (cfg_.qk_norm) {
      be_.head_layernorm_backward(dqkv, partial_grad(w.qnw, kRedQnw), partial_grad(w.qnb, kRedQnb), dqk, x.qkv,
                                  P(w.qnw), x.qn_mean, x.qn_rstd, BT, NHl, hs, 3 * Ca);
      be_.head_layernorm_backward(dqkv + Ca, partial_grad(w.knw, kRedKnw), partial_grad(w.knb, kRedKnb), dqk + Ca,
                                  x.qkv + Ca, P(w.knw), x.kn_mean, x.kn_rstd, BT, NHl, hs, 3 * Ca);
    } else if (!w.rope_dims) {  // q and k columns pass through
      const size_t f = sizeof(float);
      be_.copy_rows(dqkv, 3 * Ca * f, dqkvp, 3 * Ca * f, 2 * Ca * f, size_t(BT));
    }
    // v: through the value residual v_l = (v_l + v_0) / 2
    const bool vres = cfg_.value_residual && l > 0;
    const float half = vres ? 0.5f : 1.0f;
    be_.axpby_rows(dqkv + 2 * Ca, dqkvp + 2 * Ca, 1.0f, half, size_t(BT), Ca, size_t(3 * Ca), size_t(3 * Ca));
    if (vres) be_.axpby_rows(s_.dv0.data(), dqkvp + 2 * Ca, 1.0f, half, size_t(BT), Ca, size_t(Ca), size_t(3 * Ca));
  }
  if (cfg_.value_residual && l == 0)  // layer 0's v also feeds every later layer
    be_.axpby_rows(dqkv + 2 * Ca, s_.dv0.data(), 1.0f, 1.0f, size_t(BT), Ca, size_t(3 * Ca), size_t(Ca));
  return dqkv;
}

// dres: d(residual3) on entry, d(residual) on exit (the residual adds pass it through unchanged).
void Model::block_backward(int l, const float* residual, float* dres) {
  const int B = B_, T = T_, C = cfg_.d_model, BT = B * T;
  const int Ca = Ca_, F = Fl_;
  const size_t n = size_t(BT) * C, na = size_t(BT) * Ca;
  const bool tp = tp_size_ > 1;
  const float s = float(cfg_.residual_scale);
  const LayerParams& w = lay_.layers[l];
  const LayerActs& x = acts_.layers[l];
  // d(LayerNorm output): with TP > 1 it sits in tpred_ after the partial-gradient slots
  float* dln = tp ? red_dln() : s_.dln.data();
  float* dxa = s_.dxa.data();
  // d(sub-block output) = s * dres
  float* dout = s != 1.0f ? s_.dtmp.data() : dres;
  auto scale_dout = [&] {
    if (s != 1.0f) be_.axpby_rows(dout, dres, 0.0f, s, size_t(BT), C, size_t(C), size_t(C));
  };
  scale_dout();
  auto zero = [&](float* p, size_t count) { be_.zero(p, count * sizeof(float)); };

  // Activation gradients with one producer are written, not added to zeros; dln is zeroed only
  // where a second contribution is added to it (the token shift's, KVM's gate).
  // ---- MLP sub-block: residual3 = residual2 + s * mlp(ln2(residual2)) ----
  if (tp) red_begin(n);
  else if (cfg_.token_shift) zero(dln, n);
  float* dact = s_.dact.data();  // d(activation output), then in place d(fc output)
  linear_backward(dact, Dinp::overwrite, w.fcprojw, w.fcprojb, dout, x.fch_act, BT, F, C);
  switch (cfg_.mlp) {
    case config::Mlp::gelu: be_.gelu_backward(dact, x.fch, dact, BT * F); break;
    case config::Mlp::relu2: be_.relu2_backward(dact, x.fch, dact, BT * F); break;
  }
  float* dxm = cfg_.token_shift ? dxa : dln;
  linear_backward(dxm, Dinp::overwrite, w.fcw, w.fcb, dact, x.xm, BT, C, F);
  if (cfg_.token_shift)
    be_.token_shift_backward(dln, partial_grad(w.shift_mlp, kRedShift), dxa, x.ln2, P(w.shift_mlp), B, T, C);
  if (tp) {
    const Param dst[kRedSlots] = {w.shift_mlp};
    red_finish(n, dst);
  }
  be_.layernorm_backward(dres, G(w.ln2w), G(w.ln2b), dln, x.residual2, P(w.ln2w), x.ln2_mean, x.ln2_rstd, BT,
                         C);

  // ---- attention sub-block: residual2 = residual + s * attn(ln1(residual)) ----
  scale_dout();
  float* datty = s_.datty.data();
  float* dqkvp = s_.dqkvp.data();
  zero(dqkvp, na * 3);
  const bool gate = w.mixer == Mixer::kvm;  // KVM's gate adds its gradient to dln
  if (tp) red_begin(n);
  else if (gate || cfg_.token_shift) zero(dln, n);
  linear_backward(datty, Dinp::overwrite, w.projw, w.projb, dout, x.atty, BT, Ca, C);
  mixer_backward(l, datty, dqkvp, dln);
  const float* dqkv = qkv_prep_backward(l, dqkvp);
  float* dx_in = cfg_.token_shift ? dxa : dln;
  linear_backward(dx_in, dx_in == dln && gate ? Dinp::accumulate : Dinp::overwrite, w.qkvw, w.qkvb, dqkv, x.xa, BT,
                  C, 3 * Ca);
  if (cfg_.token_shift)
    be_.token_shift_backward(dln, partial_grad(w.shift_att, kRedShift), dxa, x.ln1, P(w.shift_att), B, T, C);
  if (tp) {
    const Param dst[kRedSlots] = {w.shift_att, w.qnw, w.qnb, w.knw, w.knb, w.lnsw, w.lnsb};
    red_finish(n, dst);
  }
  be_.layernorm_backward(dres, G(w.ln1w), G(w.ln1b), dln, residual, P(w.ln1w), x.ln1_mean, x.ln1_rstd, BT, C);
}
