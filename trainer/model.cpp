#include "trainer/model.h"

#include <cmath>
#include <cstring>

#include "kernels/kernels.h"
#include "trainer/rng.h"

namespace k = kernels::cpu;

Model::Model(const config::ModelConfig& cfg, int B, int T) : cfg_(cfg), maxB_(B), maxT_(T) {
  const int Vp = cfg.padded_vocab_size, C = cfg.d_model, L = cfg.n_layer, maxT = cfg.max_seq_len;
  wte_ = table_.add("wte", {Vp, C}, true).offset;
  wpe_ = table_.add("wpe", {maxT, C}, true).offset;
  for (int l = 0; l < L; l++) {
    std::string p = "h." + std::to_string(l) + ".";
    Layer y;
    y.ln1w = table_.add(p + "ln_1.weight", {C}, false).offset;
    y.ln1b = table_.add(p + "ln_1.bias", {C}, false).offset;
    y.qkvw = table_.add(p + "attn.qkv.weight", {3 * C, C}, true).offset;
    y.qkvb = table_.add(p + "attn.qkv.bias", {3 * C}, false).offset;
    y.attprojw = table_.add(p + "attn.proj.weight", {C, C}, true).offset;
    y.attprojb = table_.add(p + "attn.proj.bias", {C}, false).offset;
    y.ln2w = table_.add(p + "ln_2.weight", {C}, false).offset;
    y.ln2b = table_.add(p + "ln_2.bias", {C}, false).offset;
    y.fcw = table_.add(p + "mlp.fc.weight", {4 * C, C}, true).offset;
    y.fcb = table_.add(p + "mlp.fc.bias", {4 * C}, false).offset;
    y.fcprojw = table_.add(p + "mlp.proj.weight", {C, 4 * C}, true).offset;
    y.fcprojb = table_.add(p + "mlp.proj.bias", {C}, false).offset;
    layers_.push_back(y);
  }
  lnfw_ = table_.add("ln_f.weight", {C}, false).offset;
  lnfb_ = table_.add("ln_f.bias", {C}, false).offset;
  head_ = cfg.tie_embeddings ? wte_ : table_.add("lm_head.weight", {Vp, C}, true).offset;
  params_ = AlignedBuffer(table_.total());
  grads_ = AlignedBuffer(table_.total());

  const size_t BT = size_t(B) * T, NH = cfg.n_head;
  size_t total = 0;
  auto alloc = [&](size_t n) {
    size_t off = total;
    total += (n + 15) / 16 * 16;
    return off;
  };
  encoded_ = alloc(BT * C);
  for (int l = 0; l < L; l++) {
    LayerActs a;
    a.ln1 = alloc(BT * C);
    a.ln1_mean = alloc(BT);
    a.ln1_rstd = alloc(BT);
    a.qkv = alloc(BT * 3 * C);
    a.atty = alloc(BT * C);
    a.att_lse = alloc(size_t(B) * NH * T);
    a.residual2 = alloc(BT * C);
    a.ln2 = alloc(BT * C);
    a.ln2_mean = alloc(BT);
    a.ln2_rstd = alloc(BT);
    a.fch = alloc(BT * 4 * C);
    a.fch_gelu = alloc(BT * 4 * C);
    a.residual3 = alloc(BT * C);
    lacts_.push_back(a);
  }
  lnf_ = alloc(BT * C);
  lnf_mean_ = alloc(BT);
  lnf_rstd_ = alloc(BT);
  logits_off_ = alloc(BT * Vp);
  losses_ = alloc(BT);
  acts_ = AlignedBuffer(total);
  dres_ = AlignedBuffer(BT * C);
  dln_ = AlignedBuffer(BT * C);
  dqkv_ = AlignedBuffer(BT * 3 * C);
  datty_ = AlignedBuffer(BT * C);
  dfch_ = AlignedBuffer(BT * 4 * C);
  dfch_gelu_ = AlignedBuffer(BT * 4 * C);
}

void Model::init(uint64_t seed) {
  Rng rng(seed);
  float* p = params_.data();
  params_.zero();
  const float std_resid = 0.02f / std::sqrt(2.0f * cfg_.n_layer);
  for (const auto& v : table_.views()) {
    bool is_norm_weight = v.name.find("ln_") != std::string::npos && v.name.ends_with(".weight");
    if (is_norm_weight) {
      for (size_t i = 0; i < v.size; i++) p[v.offset + i] = 1.0f;
    } else if (v.decay) {
      bool resid = v.name.ends_with("attn.proj.weight") || v.name.ends_with("mlp.proj.weight");
      float std = resid ? std_resid : 0.02f;
      // embedding and head rows past the real vocabulary stay zero: no token ever selects them
      size_t n = (v.name == "wte" || v.name == "lm_head.weight") ? size_t(cfg_.vocab_size) * cfg_.d_model : v.size;
      for (size_t i = 0; i < n; i++) p[v.offset + i] = float(rng.normal()) * std;
    }
  }
}

size_t Model::num_params() const {
  size_t n = 0;
  for (const auto& v : table_.views()) n += v.size;
  return n;
}

double Model::flops_per_token(int T) const {
  const double C = cfg_.d_model, L = cfg_.n_layer, Vp = cfg_.padded_vocab_size;
  double matmul = L * (2 * C * 3 * C + 2 * C * C + 2 * 2 * C * 4 * C) + 2 * C * Vp;
  double attention = L * 2 * 2 * C * (T + 1) / 2.0;  // q.k and p.v over the causal half
  return matmul + attention;
}

void Model::forward(const int* inputs, int B, int T) {
  const int C = cfg_.d_model, NH = cfg_.n_head, Vp = cfg_.padded_vocab_size, BT = B * T;
  B_ = B, T_ = T, inputs_ = inputs;
  float* p = params_.data();
  float* a = acts_.data();
  k::encoder_forward(a + encoded_, inputs, p + wte_, p + wpe_, B, T, C);
  const float* residual = a + encoded_;
  for (size_t l = 0; l < layers_.size(); l++) {
    const Layer& w = layers_[l];
    const LayerActs& x = lacts_[l];
    k::layernorm_forward(a + x.ln1, a + x.ln1_mean, a + x.ln1_rstd, residual, p + w.ln1w, p + w.ln1b, BT, C);
    k::matmul_forward(a + x.qkv, a + x.ln1, p + w.qkvw, p + w.qkvb, BT, C, 3 * C);
    k::attention_forward(a + x.atty, a + x.att_lse, a + x.qkv, B, T, C, NH, 0);
    // the projection lands in residual3's buffer, free until the MLP writes it
    k::matmul_forward(a + x.residual3, a + x.atty, p + w.attprojw, p + w.attprojb, BT, C, C);
    k::residual_forward(a + x.residual2, residual, a + x.residual3, BT * C);
    k::layernorm_forward(a + x.ln2, a + x.ln2_mean, a + x.ln2_rstd, a + x.residual2, p + w.ln2w, p + w.ln2b, BT, C);
    k::matmul_forward(a + x.fch, a + x.ln2, p + w.fcw, p + w.fcb, BT, C, 4 * C);
    k::gelu_forward(a + x.fch_gelu, a + x.fch, BT * 4 * C);
    k::matmul_forward(a + x.residual3, a + x.fch_gelu, p + w.fcprojw, p + w.fcprojb, BT, 4 * C, C);
    k::residual_forward(a + x.residual3, a + x.residual2, a + x.residual3, BT * C);
    residual = a + x.residual3;
  }
  k::layernorm_forward(a + lnf_, a + lnf_mean_, a + lnf_rstd_, residual, p + lnfw_, p + lnfb_, BT, C);
  k::matmul_forward(a + logits_off_, a + lnf_, p + head_, nullptr, BT, C, Vp);
}

float Model::loss(const int* targets, float dloss) {
  const int N = B_ * T_;
  float* losses = acts_.data() + losses_;
  k::crossentropy_forward_backward(acts_.data() + logits_off_, losses, targets, N, cfg_.vocab_size,
                                   cfg_.padded_vocab_size, dloss, -1);
  double sum = 0;
  int count = 0;
  for (int i = 0; i < N; i++) {
    if (targets[i] == -1) continue;
    sum += losses[i];
    count++;
  }
  return count ? float(sum / count) : 0.0f;
}

void Model::backward() {
  const int B = B_, T = T_, C = cfg_.d_model, NH = cfg_.n_head, Vp = cfg_.padded_vocab_size, BT = B * T;
  const size_t n = size_t(BT) * C;
  float* p = params_.data();
  float* g = grads_.data();
  float* a = acts_.data();
  float* dres = dres_.data();  // d(residual stream), carried down through the blocks
  float* dln = dln_.data();
  std::memset(dres, 0, n * sizeof(float));
  std::memset(dln, 0, n * sizeof(float));
  const float* last = layers_.empty() ? a + encoded_ : a + lacts_.back().residual3;
  k::matmul_backward(dln, g + head_, nullptr, a + logits_off_, a + lnf_, p + head_, BT, C, Vp);
  k::layernorm_backward(dres, g + lnfw_, g + lnfb_, dln, last, p + lnfw_, a + lnf_mean_, a + lnf_rstd_, BT, C);
  for (int l = int(layers_.size()) - 1; l >= 0; l--) {
    const Layer& w = layers_[l];
    const LayerActs& x = lacts_[l];
    const float* residual = l == 0 ? a + encoded_ : a + lacts_[l - 1].residual3;
    // residual3 = residual2 + mlp(ln2(residual2)): dres is d(residual3) and d(residual2) at once
    std::memset(dfch_gelu_.data(), 0, n * 4 * sizeof(float));
    std::memset(dfch_.data(), 0, n * 4 * sizeof(float));
    std::memset(dln, 0, n * sizeof(float));
    k::matmul_backward(dfch_gelu_.data(), g + w.fcprojw, g + w.fcprojb, dres, a + x.fch_gelu, p + w.fcprojw, BT, 4 * C, C);
    k::gelu_backward(dfch_.data(), a + x.fch, dfch_gelu_.data(), BT * 4 * C);
    k::matmul_backward(dln, g + w.fcw, g + w.fcb, dfch_.data(), a + x.ln2, p + w.fcw, BT, C, 4 * C);
    k::layernorm_backward(dres, g + w.ln2w, g + w.ln2b, dln, a + x.residual2, p + w.ln2w, a + x.ln2_mean,
                          a + x.ln2_rstd, BT, C);
    // residual2 = residual + attn(ln1(residual))
    std::memset(datty_.data(), 0, n * sizeof(float));
    std::memset(dqkv_.data(), 0, n * 3 * sizeof(float));
    std::memset(dln, 0, n * sizeof(float));
    k::matmul_backward(datty_.data(), g + w.attprojw, g + w.attprojb, dres, a + x.atty, p + w.attprojw, BT, C, C);
    k::attention_backward(dqkv_.data(), datty_.data(), a + x.qkv, a + x.atty, a + x.att_lse, B, T, C, NH, 0);
    k::matmul_backward(dln, g + w.qkvw, g + w.qkvb, dqkv_.data(), a + x.ln1, p + w.qkvw, BT, C, 3 * C);
    k::layernorm_backward(dres, g + w.ln1w, g + w.ln1b, dln, residual, p + w.ln1w, a + x.ln1_mean, a + x.ln1_rstd,
                          BT, C);
  }
  k::encoder_backward(g + wte_, g + wpe_, dres, inputs_, B, T, C);
}
