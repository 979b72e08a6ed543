// One pre-LayerNorm block, forward and backward, top to bottom:
//   residual2 = residual  + s * proj(mixer(qkv_prep(W_qkv shift(ln_1(residual)))))
//   residual3 = residual2 + s * W_out act(W_fc shift(ln_2(residual2)))
// s = model.residual_scale; shift = the token shift (identity when off); act = GELU or ReLU^2;
// qkv_prep = value residual on v, qk-LayerNorm and partial RoPE on q and k; mixer = causal
// attention (window 0), sliding-window attention, or KVM (mixer_kvm.cpp).
#include <cstring>

#include "kernels/kernels.h"
#include "trainer/model.h"

namespace k = kernels::cpu;

namespace {

// v rows of qkv (N, 3C) <-> a plain (N, C) buffer
void copy_v_out(float* v, const float* qkv, int N, int C) {
  for (int n = 0; n < N; n++) std::memcpy(v + size_t(n) * C, qkv + size_t(n) * 3 * C + 2 * C, C * sizeof(float));
}

}  // namespace

void Model::mixer_forward(int l) {
  const Layer& w = layers_[l];
  const LayerActs& x = lacts_[l];
  if (w.mixer == Mixer::kvm) return kvm_forward(l);
  k::attention_forward(A(x.atty), A(x.lse), A(x.qkvp), B_, T_, cfg_.d_model, cfg_.n_head, w.window);
}

void Model::mixer_backward(int l, float* datty, float* dqkvp, float* dln1) {
  const Layer& w = layers_[l];
  const LayerActs& x = lacts_[l];
  if (w.mixer == Mixer::kvm) return kvm_backward(l, datty, dqkvp, dln1);
  k::attention_backward(dqkvp, datty, A(x.qkvp), A(x.atty), A(x.lse), B_, T_, cfg_.d_model, cfg_.n_head, w.window);
}

void Model::block_forward(int l, const float* residual) {
  const int B = B_, T = T_, C = cfg_.d_model, NH = cfg_.n_head, hs = C / NH, BT = B * T;
  const float s = float(cfg_.residual_scale), base = float(cfg_.rope_base);
  const Layer& w = layers_[l];
  const LayerActs& x = lacts_[l];

  // ---- attention sub-block ----
  k::layernorm_forward(A(x.ln1), A(x.ln1_mean), A(x.ln1_rstd), residual, P(w.ln1w), P(w.ln1b), BT, C);
  if (cfg_.token_shift) k::token_shift_forward(A(x.xa), A(x.ln1), nullptr, P(w.shift_att), B, T, C);
  k::matmul_forward(A(x.qkv), A(x.xa), P(w.qkvw), P(w.qkvb), BT, C, 3 * C);
  if (cfg_.value_residual && l == 0) copy_v_out(A(v0_), A(x.qkv), BT, C);
  if (qkv_processed(l)) {
    float* qkvp = A(x.qkvp);
    std::memcpy(qkvp, A(x.qkv), size_t(BT) * 3 * C * sizeof(float));
    if (cfg_.value_residual && l > 0) {  // v_l = (v_l + v_0) / 2
      const float* v0 = A(v0_);
      for (int n = 0; n < BT; n++)
        for (int c = 0; c < C; c++) {
          float& v = qkvp[size_t(n) * 3 * C + 2 * C + c];
          v = 0.5f * (v + v0[size_t(n) * C + c]);
        }
    }
    if (cfg_.qk_norm) {
      k::head_layernorm_forward(qkvp, A(x.qn_mean), A(x.qn_rstd), A(x.qkv), P(w.qnw), P(w.qnb), BT, NH, hs, 3 * C);
      k::head_layernorm_forward(qkvp + C, A(x.kn_mean), A(x.kn_rstd), A(x.qkv) + C, P(w.knw), P(w.knb), BT, NH, hs,
                                3 * C);
    }
    if (w.rope_dims) {
      k::rope_forward(qkvp, qkvp, B, T, NH, hs, 3 * C, w.rope_dims, base, 0);
      k::rope_forward(qkvp + C, qkvp + C, B, T, NH, hs, 3 * C, w.rope_dims, base, 0);
    }
  }
  mixer_forward(l);
  // the projection lands in residual3's buffer, free until the MLP writes it
  k::matmul_forward(A(x.residual3), A(x.atty), P(w.projw), P(w.projb), BT, C, C);
  k::scaled_residual_forward(A(x.residual2), residual, A(x.residual3), s, BT * C);

  // ---- MLP sub-block ----
  k::layernorm_forward(A(x.ln2), A(x.ln2_mean), A(x.ln2_rstd), A(x.residual2), P(w.ln2w), P(w.ln2b), BT, C);
  if (cfg_.token_shift) k::token_shift_forward(A(x.xm), A(x.ln2), nullptr, P(w.shift_mlp), B, T, C);
  k::matmul_forward(A(x.fch), A(x.xm), P(w.fcw), P(w.fcb), BT, C, 4 * C);
  if (cfg_.mlp == "relu2") k::relu2_forward(A(x.fch_act), A(x.fch), BT * 4 * C);
  else k::gelu_forward(A(x.fch_act), A(x.fch), BT * 4 * C);
  k::matmul_forward(A(x.residual3), A(x.fch_act), P(w.fcprojw), P(w.fcprojb), BT, 4 * C, C);
  k::scaled_residual_forward(A(x.residual3), A(x.residual2), A(x.residual3), s, BT * C);
}

// dres: d(residual3) on entry, d(residual) on exit (the residual adds pass it through unchanged).
void Model::block_backward(int l, const float* residual, float* dres) {
  const int B = B_, T = T_, C = cfg_.d_model, NH = cfg_.n_head, hs = C / NH, BT = B * T;
  const size_t n = size_t(BT) * C;
  const float s = float(cfg_.residual_scale), base = float(cfg_.rope_base);
  const Layer& w = layers_[l];
  const LayerActs& x = lacts_[l];
  float* dln = s_.dln.data();
  float* dxa = s_.dxa.data();
  // d(sub-block output) = s * dres
  float* dout = dres;
  if (s != 1.0f) {
    dout = s_.dtmp.data();
    for (size_t i = 0; i < n; i++) dout[i] = s * dres[i];
  }
  auto zero = [](float* p, size_t count) { std::memset(p, 0, count * sizeof(float)); };

  // ---- MLP sub-block: residual3 = residual2 + s * mlp(ln2(residual2)) ----
  zero(s_.dact.data(), n * 4);
  zero(s_.dfch.data(), n * 4);
  zero(dln, n);
  zero(dxa, n);
  k::matmul_backward(s_.dact.data(), G(w.fcprojw), G(w.fcprojb), dout, A(x.fch_act), P(w.fcprojw), BT, 4 * C, C);
  if (cfg_.mlp == "relu2") k::relu2_backward(s_.dfch.data(), A(x.fch), s_.dact.data(), BT * 4 * C);
  else k::gelu_backward(s_.dfch.data(), A(x.fch), s_.dact.data(), BT * 4 * C);
  float* dxm = cfg_.token_shift ? dxa : dln;
  k::matmul_backward(dxm, G(w.fcw), G(w.fcb), s_.dfch.data(), A(x.xm), P(w.fcw), BT, C, 4 * C);
  if (cfg_.token_shift) k::token_shift_backward(dln, G(w.shift_mlp), dxa, A(x.ln2), P(w.shift_mlp), B, T, C);
  k::layernorm_backward(dres, G(w.ln2w), G(w.ln2b), dln, A(x.residual2), P(w.ln2w), A(x.ln2_mean), A(x.ln2_rstd), BT,
                        C);

  // ---- attention sub-block: residual2 = residual + s * attn(ln1(residual)) ----
  if (s != 1.0f)
    for (size_t i = 0; i < n; i++) dout[i] = s * dres[i];
  float* datty = s_.datty.data();
  float* dqkvp = s_.dqkvp.data();
  zero(datty, n);
  zero(dqkvp, n * 3);
  zero(dln, n);
  zero(dxa, n);
  k::matmul_backward(datty, G(w.projw), G(w.projb), dout, A(x.atty), P(w.projw), BT, C, C);
  mixer_backward(l, datty, dqkvp, dln);  // KVM adds its gate's gradient to dln
  float* dqkv = dqkvp;
  if (qkv_processed(l)) {
    dqkv = s_.dqkv.data();
    zero(dqkv, n * 3);
    // q and k: back through RoPE, then through qk-LayerNorm
    const float* dqk = dqkvp;
    if (w.rope_dims) {
      float* target = cfg_.qk_norm ? s_.dq3.data() : dqkv;
      if (cfg_.qk_norm) zero(target, n * 3);
      k::rope_backward(target, dqkvp, B, T, NH, hs, 3 * C, w.rope_dims, base, 0);
      k::rope_backward(target + C, dqkvp + C, B, T, NH, hs, 3 * C, w.rope_dims, base, 0);
      dqk = target;
    }
    if (cfg_.qk_norm) {
      k::head_layernorm_backward(dqkv, G(w.qnw), G(w.qnb), dqk, A(x.qkv), P(w.qnw), A(x.qn_mean), A(x.qn_rstd), BT, NH,
                                 hs, 3 * C);
      k::head_layernorm_backward(dqkv + C, G(w.knw), G(w.knb), dqk + C, A(x.qkv) + C, P(w.knw), A(x.kn_mean),
                                 A(x.kn_rstd), BT, NH, hs, 3 * C);
    } else if (!w.rope_dims) {
      for (int r = 0; r < BT; r++) std::memcpy(dqkv + size_t(r) * 3 * C, dqkvp + size_t(r) * 3 * C, 2 * C * sizeof(float));
    }
    // v: through the value residual v_l = (v_l + v_0) / 2
    const bool vres = cfg_.value_residual && l > 0;
    float* dv0 = vres ? s_.dv0.data() : nullptr;
    for (int r = 0; r < BT; r++)
      for (int c = 0; c < C; c++) {
        float d = dqkvp[size_t(r) * 3 * C + 2 * C + c];
        if (vres) {
          dqkv[size_t(r) * 3 * C + 2 * C + c] += 0.5f * d;
          dv0[size_t(r) * C + c] += 0.5f * d;
        } else {
          dqkv[size_t(r) * 3 * C + 2 * C + c] += d;
        }
      }
  }
  if (cfg_.value_residual && l == 0) {  // layer 0's v also feeds every later layer
    const float* dv0 = s_.dv0.data();
    for (int r = 0; r < BT; r++)
      for (int c = 0; c < C; c++) dqkv[size_t(r) * 3 * C + 2 * C + c] += dv0[size_t(r) * C + c];
  }
  float* dx_in = cfg_.token_shift ? dxa : dln;
  k::matmul_backward(dx_in, G(w.qkvw), G(w.qkvb), dqkv, A(x.xa), P(w.qkvw), BT, C, 3 * C);
  if (cfg_.token_shift) k::token_shift_backward(dln, G(w.shift_att), dxa, A(x.ln1), P(w.shift_att), B, T, C);
  k::layernorm_backward(dres, G(w.ln1w), G(w.ln1b), dln, residual, P(w.ln1w), A(x.ln1_mean), A(x.ln1_rstd), BT, C);
}
