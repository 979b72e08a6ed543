// One pre-LayerNorm block, forward (a training pass, or one token of a decode) and backward:
//   residual2 = residual  + s * proj(mixer(qkv_prep(W_qkv shift(ln_1(residual)))))
//   residual3 = residual2 + s * W_out act(W_fc shift(ln_2(residual2)))
// s = model.residual_scale; shift = kvmtrain's token shift or the paper's MLP shift (identity when
// off); act = GELU or ReLU^2; qkv_prep = the value residual on v, the paper's q/k/v shift, qk-LayerNorm
// and partial RoPE on q and k, in that order; mixer = causal attention (window 0), sliding-window
// or block-sliding-window attention, or KVM (mixer_kvm.cpp).
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
    case Mixer::bswa:
      if (p.decode) {
        DecodeCache::Layer& c = p.decode->layers[l];
        return be_.attention_decode(x.atty, c.k.data(), c.v.data(), x.qkvm, p.B, Ca_, NHl_, p.pos0, c.cap, w.window,
                                    w.block);
      }
      return be_.attention_forward(x.atty, x.lse, x.qkvm, p.B, p.T, Ca_, NHl_, w.window, w.block);
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
    case Mixer::bswa:
      return be_.attention_backward(dqkvp, datty, x.qkvm, x.atty, x.lse, B_, T_, Ca_, NHl_, w.window, w.block);
  }
}

void Model::token_shift(float* out, const float* inp, Param w, int C, kernels::TokenShiftForm form, const Pass& p,
                        DeviceBuffer* prev) {
  // decode: the previous token's row once there is one (position 0 starts as training does)
  const float* before = prev && p.pos0 > 0 ? prev->data() : nullptr;
  be_.token_shift_forward(out, inp, before, P(w), p.B, p.T, C, form);
  if (prev) be_.copy(prev->data(), inp + size_t(p.T - 1) * C, size_t(C) * sizeof(float));
}

kernels::TokenShiftForm Model::mlp_shift_form() const {
  return cfg_.token_shift ? kernels::TokenShiftForm::mix_zero : kernels::TokenShiftForm::delta_zero;
}

void Model::value_residual_forward(int l, const Pass& p, float* out, const float* v, int ld) {
  const int BT = p.B * p.T, C = cfg_.d_model, Ca = Ckv_;  // the values' width
  const LayerParams& w = lay_.layers[l];
  const LayerActs& x = p.acts.layers[l];
  const float* anchor = p.acts.anchor_of(w.anchor);
  switch (cfg_.value_residual_mode) {
    case config::ValueResidualMode::average:  // v_l = (v_l + v_0) / 2
      if (out != v) be_.copy_rows(out, ld * sizeof(float), v, ld * sizeof(float), Ca * sizeof(float), size_t(BT));
      return be_.axpby_rows(out, anchor, 0.5f, 0.5f, size_t(BT), Ca, size_t(ld), size_t(Ca));
    case config::ValueResidualMode::linear:
      return be_.value_residual_forward(out, ld, v, ld, anchor, nullptr, P(w.vr_lambda), BT, Ca,
                                        kernels::ValueResidualMode::linear);
    case config::ValueResidualMode::rwkv:  // gate = sigmoid(bias + W_up W_down ln1)
      linear_forward(x.vr_h, x.ln1, w.vr_down, Param{}, BT, C, value_gate_rank(C));
      linear_forward(x.vr_z, x.vr_h, w.vr_up, Param{}, BT, value_gate_rank(C), Ca);
      return be_.value_residual_forward(out, ld, v, ld, anchor, x.vr_z, P(w.vr_bias), BT, Ca,
                                        kernels::ValueResidualMode::rwkv);
  }
}

void Model::qkv_prep_forward(int l, const Pass& p) {
  const int B = p.B, T = p.T, C = cfg_.d_model, hs = C / cfg_.n_head, BT = B * T, Ca = Ca_, NHl = NHl_;
  const int NKV = NKVl_, W = W_, vo = Ca_ + Ckv_;  // q|k|v rows: k at column Ca, v at vo
  const LayerParams& w = lay_.layers[l];
  const LayerActs& x = p.acts.layers[l];
  DecodeCache::Layer* cache = p.decode ? &p.decode->layers[l] : nullptr;
  const size_t f = sizeof(float), row = W * f;
  if (qkv_processed(l)) {
    const float* cur = x.qkv;  // the rows each stage reads
    if (value_residual_applies(cfg_, l)) {
      float* out = cfg_.qkv_shift ? x.qkvr : x.qkvp;
      be_.copy_rows(out, row, x.qkv, row, vo * f, size_t(BT));  // q and k pass
      value_residual_forward(l, p, out + vo, x.qkv + vo, W);
      cur = out;
    }
    if (cfg_.qkv_shift) {
      token_shift(x.qkvs, cur, w.shift_qkv, W, kernels::TokenShiftForm::delta_first, p,
                  cache ? &cache->prev_qkv : nullptr);
      cur = x.qkvs;
    }
    if (cur != x.qkvp) be_.copy(x.qkvp, cur, size_t(BT) * row);
    if (cfg_.qk_norm) {  // q and k as they were before the value residual, which only touches v
      const float* qk = cfg_.qkv_shift ? x.qkvs : x.qkv;
      be_.head_layernorm_forward(x.qkvp, x.qn_mean, x.qn_rstd, qk, P(w.qnw), P(w.qnb), BT, NHl, hs, W);
      be_.head_layernorm_forward(x.qkvp + Ca, x.kn_mean, x.kn_rstd, qk + Ca, P(w.knw), P(w.knb), BT, NKV, hs, W);
    }
    if (w.rope_dims) {
      const auto variant = rope_variant();
      be_.rope_forward(x.qkvp, x.qkvp, B, T, NHl, hs, W, w.rope_dims, w.rope_base, p.pos0, variant);
      be_.rope_forward(x.qkvp + Ca, x.qkvp + Ca, B, T, NKV, hs, W, w.rope_dims, w.rope_base, p.pos0, variant);
    }
  }
  if (gqa()) gqa_expand(x.qkvx, x.qkvp, BT);
}

void Model::gqa_expand(float* dst, const float* src, int BT) {
  const int Ca = Ca_, hs = cfg_.d_model / cfg_.n_head, G = NHl_ / NKVl_;
  const size_t f = sizeof(float), ld = 3 * Ca * f, lds = size_t(W_) * f;
  be_.copy_rows(dst, ld, src, lds, Ca * f, size_t(BT));  // q
  for (int h = 0; h < NHl_; h++)                          // query head h reads key/value head h / G
    for (int j : {0, 1})
      be_.copy_rows(dst + (1 + j) * Ca + h * hs, ld, src + Ca + j * Ckv_ + (h / G) * hs, lds, hs * f, size_t(BT));
}

void Model::gqa_reduce(float* dst, const float* src, int BT) {
  const int Ca = Ca_, hs = cfg_.d_model / cfg_.n_head, G = NHl_ / NKVl_;
  const size_t f = sizeof(float);
  be_.copy_rows(dst, W_ * f, src, 3 * Ca * f, Ca * f, size_t(BT));
  for (int h = 0; h < NHl_; h++)
    for (int j : {0, 1}) {  // the group's first query head writes, the others add
      float* d = dst + Ca + j * Ckv_ + (h / G) * hs;
      const float* s = src + (1 + j) * Ca + h * hs;
      if (h % G == 0) be_.copy_rows(d, W_ * f, s, 3 * Ca * f, hs * f, size_t(BT));
      else be_.axpby_rows(d, s, 1.0f, 1.0f, size_t(BT), hs, size_t(W_), size_t(3 * Ca));
    }
}

void Model::block_forward(int l, const float* residual, const Pass& p) {
  const int B = p.B, T = p.T, C = cfg_.d_model, BT = B * T;
  const int Ca = Ca_, F = Fl_;
  const float s = float(cfg_.residual_scale);
  const LayerParams& w = lay_.layers[l];
  const LayerActs& x = p.acts.layers[l];
  DecodeCache::Layer* cache = p.decode ? &p.decode->layers[l] : nullptr;

  // ---- attention sub-block ----
  be_.layernorm_forward(x.ln1, x.ln1_mean, x.ln1_rstd, residual, P(w.ln1w), P(w.ln1b), BT, C);
  if (cfg_.token_shift)
    token_shift(x.xa, x.ln1, w.shift_att, C, kernels::TokenShiftForm::mix_zero, p, cache ? &cache->prev_att : nullptr);
  linear_forward(x.qkv, x.xa, w.qkvw, w.qkvb, BT, C, W_);
  const size_t f = sizeof(float);
  if (cfg_.value_residual && l == 0)  // v_0: the v columns of layer 0's qkv rows
    be_.copy_rows(p.acts.v0, Ckv_ * f, x.qkv + Ca + Ckv_, W_ * f, Ckv_ * f, size_t(BT));
  qkv_prep_forward(l, p);
  mixer_forward(l, p);
  // the projection lands in residual3's buffer, free until the MLP writes it
  row_parallel_forward(x.residual3, x.atty, w.projw, w.projb, BT, Ca);
  be_.scaled_residual_forward(x.residual2, residual, x.residual3, s, BT * C);

  // ---- MLP sub-block ----
  be_.layernorm_forward(x.ln2, x.ln2_mean, x.ln2_rstd, x.residual2, P(w.ln2w), P(w.ln2b), BT, C);
  if (w.shift_mlp) token_shift(x.xm, x.ln2, w.shift_mlp, C, mlp_shift_form(), p, cache ? &cache->prev_mlp : nullptr);
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

// Back through the q/k/v preparation of layer l (value residual, the paper's shift, qk-LayerNorm,
// RoPE): from dqkvp, the gradient of the prepared rows, to that of the projection's rows (dqkvp
// itself when nothing applies); the anchor's share goes to its gradient (s_.dv0, s_.danchor), the
// rwkv gate's share of d(ln1) is added to dln1.
const float* Model::qkv_prep_backward(int l, float* dqkvp, float* dln1) {
  const int BT = B_ * T_, C = cfg_.d_model, hs = C / cfg_.n_head, Ca = Ca_, NHl = NHl_, NKV = NKVl_, W = W_;
  const int vo = Ca + Ckv_;  // the v columns
  const size_t nw = size_t(BT) * W, f = sizeof(float), row = W * f;
  const LayerParams& w = lay_.layers[l];
  const LayerActs& x = acts_.layers[l];
  auto zero = [&](float* p, size_t count) { be_.zero(p, count * sizeof(float)); };
  float* dqkv = dqkvp;
  if (qkv_processed(l)) {
    dqkv = s_.dqkv.data();
    zero(dqkv, nw);
    // q and k: back through RoPE, then through qk-LayerNorm
    const float* dqk = dqkvp;
    if (w.rope_dims) {
      float* target = cfg_.qk_norm ? s_.dq3.data() : dqkv;
      if (cfg_.qk_norm) zero(target, nw);
      be_.rope_backward(target, dqkvp, B_, T_, NHl, hs, W, w.rope_dims, w.rope_base, 0, rope_variant());
      be_.rope_backward(target + Ca, dqkvp + Ca, B_, T_, NKV, hs, W, w.rope_dims, w.rope_base, 0, rope_variant());
      dqk = target;
    }
    if (cfg_.qk_norm) {
      const float* qk = cfg_.qkv_shift ? x.qkvs : x.qkv;
      be_.head_layernorm_backward(dqkv, partial_grad(w.qnw, kRedQnw), partial_grad(w.qnb, kRedQnb), dqk, qk,
                                  P(w.qnw), x.qn_mean, x.qn_rstd, BT, NHl, hs, W);
      be_.head_layernorm_backward(dqkv + Ca, partial_grad(w.knw, kRedKnw), partial_grad(w.knb, kRedKnb), dqk + Ca,
                                  qk + Ca, P(w.knw), x.kn_mean, x.kn_rstd, BT, NKV, hs, W);
    } else if (!w.rope_dims) {  // q and k columns pass through
      be_.copy_rows(dqkv, row, dqkvp, row, vo * f, size_t(BT));
    }
    be_.copy_rows(dqkv + vo, row, dqkvp + vo, row, Ckv_ * f, size_t(BT));  // v passes
    const bool vres = value_residual_applies(cfg_, l);
    if (cfg_.qkv_shift) {  // the shift's sharded weights: each rank's gradient is whole
      float* d = s_.dqkv2.data();
      zero(d, nw);
      be_.token_shift_backward(d, G(w.shift_qkv), dqkv, vres ? x.qkvr : x.qkv, P(w.shift_qkv), B_, T_, W,
                               kernels::TokenShiftForm::delta_first);
      dqkv = d;
    }
    if (vres) value_residual_backward(l, dqkv + vo, dln1);
  }
  if (cfg_.value_residual && l == 0)  // layer 0's v also feeds every later layer
    be_.axpby_rows(dqkv + vo, s_.dv0.data(), 1.0f, 1.0f, size_t(BT), Ckv_, size_t(W), size_t(Ckv_));
  return dqkv;
}

// dv (BT rows of 3Ca floats' stride): d(mixed values) on entry, d(the layer's own values) on exit.
void Model::value_residual_backward(int l, float* dv, float* dln1) {
  const int BT = B_ * T_, C = cfg_.d_model, Ca = Ckv_, ld = W_, rank = value_gate_rank(C);  // Ca: the values' width
  const LayerParams& w = lay_.layers[l];
  const LayerActs& x = acts_.layers[l];
  const float* v = x.qkv + Ca_ + Ckv_;
  const float* anchor = acts_.anchor_of(w.anchor);
  // the gated modes' kernel reads d(mixed values) from its own buffer and writes dv
  float* dmix = s_.dvres.data();
  if (dmix) be_.copy_rows(dmix, Ca * sizeof(float), dv, ld * sizeof(float), Ca * sizeof(float), size_t(BT));
  float* danchor = w.anchor == 0 ? s_.dv0.data() : s_.danchor[size_t(w.anchor)].data();
  switch (cfg_.value_residual_mode) {
    case config::ValueResidualMode::average:  // v_l = (v_l + v_0) / 2
      be_.axpby_rows(danchor, dv, 1.0f, 0.5f, size_t(BT), Ca, size_t(Ca), size_t(ld));
      return be_.axpby_rows(dv, dv, 0.5f, 0.0f, size_t(BT), Ca, size_t(ld), size_t(ld));
    case config::ValueResidualMode::linear:
      return be_.value_residual_backward(dv, ld, danchor, nullptr, partial_grad(w.vr_lambda, kRedVrLambda), dmix, Ca,
                                         v, ld, anchor, nullptr, P(w.vr_lambda), BT, Ca,
                                         kernels::ValueResidualMode::linear);
    case config::ValueResidualMode::rwkv: {  // then back through the gate's LoRA into d(ln1)
      float* dz = s_.dvr_z.data();
      float* dh = s_.dvr_h.data();
      be_.value_residual_backward(dv, ld, danchor, dz, G(w.vr_bias), dmix, Ca, v, ld, anchor, x.vr_z, P(w.vr_bias),
                                  BT, Ca, kernels::ValueResidualMode::rwkv);
      linear_backward(dh, Dinp::overwrite, w.vr_up, Param{}, dz, x.vr_h, BT, rank, Ca);
      if (tp_size_ == 1) return linear_backward(dln1, Dinp::accumulate, w.vr_down, Param{}, dh, x.ln1, BT, C, rank);
      // tensor parallel: dh is this rank's value channels' part, so are d(ln1) and the replicated
      // down-projection's gradient, which goes to its reduction slot
      float* dw = partial_grad(w.vr_down, kRedVrDown);
      if (bf16()) return be_.matmul_backward_bf16(dln1, dw, nullptr, dh, x.ln1, P16(w.vr_down), BT, C, rank, true, true);
      return be_.matmul_backward(dln1, dw, nullptr, dh, x.ln1, P(w.vr_down), BT, C, rank, true, true);
    }
  }
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
  const bool mlp_shift = bool(w.shift_mlp);
  if (tp) red_begin(n);
  else if (mlp_shift) zero(dln, n);
  float* dact = s_.dact.data();  // d(activation output), then in place d(fc output)
  linear_backward(dact, Dinp::overwrite, w.fcprojw, w.fcprojb, dout, x.fch_act, BT, F, C);
  switch (cfg_.mlp) {
    case config::Mlp::gelu: be_.gelu_backward(dact, x.fch, dact, BT * F); break;
    case config::Mlp::relu2: be_.relu2_backward(dact, x.fch, dact, BT * F); break;
  }
  float* dxm = mlp_shift ? dxa : dln;
  linear_backward(dxm, Dinp::overwrite, w.fcw, w.fcb, dact, x.xm, BT, C, F);
  if (mlp_shift)
    be_.token_shift_backward(dln, partial_grad(w.shift_mlp, kRedShift), dxa, x.ln2, P(w.shift_mlp), B, T, C,
                             mlp_shift_form());
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
  float* dmix = gqa() ? s_.dqkvx.data() : dqkvp;  // d(the mixer's q|k|v rows)
  zero(dmix, na * 3);
  // KVM's gate and the rwkv value gate add their gradients to dln
  const bool gate = w.mixer == Mixer::kvm ||
                    (value_residual_applies(cfg_, l) && cfg_.value_residual_mode == config::ValueResidualMode::rwkv);
  if (tp) red_begin(n);
  else if (gate || cfg_.token_shift) zero(dln, n);
  linear_backward(datty, Dinp::overwrite, w.projw, w.projb, dout, x.atty, BT, Ca, C);
  mixer_backward(l, datty, dmix, dln);
  if (gqa()) gqa_reduce(dqkvp, dmix, BT);
  const float* dqkv = qkv_prep_backward(l, dqkvp, dln);
  float* dx_in = cfg_.token_shift ? dxa : dln;
  linear_backward(dx_in, dx_in == dln && gate ? Dinp::accumulate : Dinp::overwrite, w.qkvw, w.qkvb, dqkv, x.xa, BT,
                  C, W_);
  if (cfg_.token_shift)
    be_.token_shift_backward(dln, partial_grad(w.shift_att, kRedShift), dxa, x.ln1, P(w.shift_att), B, T, C,
                             kernels::TokenShiftForm::mix_zero);
  if (tp) {
    const Param dst[kRedSlots] = {w.shift_att, w.qnw, w.qnb, w.knw, w.knb, w.lnsw, w.lnsb, w.vr_down, w.vr_lambda};
    red_finish(n, dst);
  }
  be_.layernorm_backward(dres, G(w.ln1w), G(w.ln1b), dln, residual, P(w.ln1w), x.ln1_mean, x.ln1_rstd, BT, C);
}
