// The model's layout (parameters, activations), initialisation, and the parts outside the blocks:
// embedding (+ optional LayerNorm), final LayerNorm, head, loss. Blocks are in block.cpp.
#include "trainer/model.h"

#include <cmath>
#include <cstring>
#include <stdexcept>

#include "kernels/kernels.h"
#include "trainer/rng.h"

namespace k = kernels::cpu;

Model::Model(const config::ModelConfig& cfg, int B, int T, bool recompute_blocks)
    : cfg_(cfg), maxB_(B), maxT_(T), recompute_(recompute_blocks) {
  const int Vp = cfg.padded_vocab_size, C = cfg.d_model, L = cfg.n_layer, NH = cfg.n_head, hs = C / NH;
  if (cfg.mixers.empty()) throw std::invalid_argument("model.mixers: empty");
  const bool rope = cfg.pos == "rope";
  const int R = cfg.rope_dims ? cfg.rope_dims : hs / 2;
  const int R_swa = cfg.swa_rope_dims ? cfg.swa_rope_dims : R;
  const bool bias = cfg.bias;

  // ---- parameters, in the order of the forward pass ----
  auto add = [&](const std::string& name, std::vector<int> shape, bool decay) {
    return table_.add(name, std::move(shape), decay).offset;
  };
  wte_ = add("wte", {Vp, C}, true);
  if (!rope) wpe_ = add("wpe", {cfg.max_seq_len, C}, true);
  if (cfg.emb_norm) {
    lnew_ = add("ln_e.weight", {C}, false);
    lneb_ = add("ln_e.bias", {C}, false);
  }
  for (int l = 0; l < L; l++) {
    std::string p = "h." + std::to_string(l) + ".";
    const std::string& mix = cfg.mixers[size_t(l) % cfg.mixers.size()];
    Layer y;
    std::memset(&y, 0xff, sizeof y);  // every offset kNone until added
    y.mixer = mix == "kvm" ? Mixer::kvm : mix == "swa" ? Mixer::swa : Mixer::attn;
    y.window = y.mixer == Mixer::swa ? cfg.swa_window : 0;
    y.rope_dims = rope ? (y.mixer == Mixer::swa ? R_swa : R) : 0;
    y.ln1w = add(p + "ln_1.weight", {C}, false);
    y.ln1b = add(p + "ln_1.bias", {C}, false);
    if (cfg.token_shift) y.shift_att = add(p + "attn.shift", {C}, false);
    y.qkvw = add(p + "attn.qkv.weight", {3 * C, C}, true);
    if (bias) y.qkvb = add(p + "attn.qkv.bias", {3 * C}, false);
    if (cfg.qk_norm) {
      y.qnw = add(p + "attn.ln_q.weight", {hs}, false);
      y.qnb = add(p + "attn.ln_q.bias", {hs}, false);
      y.knw = add(p + "attn.ln_k.weight", {hs}, false);
      y.knb = add(p + "attn.ln_k.bias", {hs}, false);
    }
    if (y.mixer == Mixer::kvm) {
      y.lnsw = add(p + "kvm.ln_s.weight", {hs}, false);
      y.lnsb = add(p + "kvm.ln_s.bias", {hs}, false);
      y.gatew = add(p + "kvm.gate.weight", {NH, C}, true);
      y.tau_front = add(p + "kvm.tau_front", {NH}, false);
      y.tau_state = add(p + "kvm.tau_state", {NH}, false);
    }
    y.projw = add(p + "attn.proj.weight", {C, C}, true);
    if (bias) y.projb = add(p + "attn.proj.bias", {C}, false);
    y.ln2w = add(p + "ln_2.weight", {C}, false);
    y.ln2b = add(p + "ln_2.bias", {C}, false);
    if (cfg.token_shift) y.shift_mlp = add(p + "mlp.shift", {C}, false);
    y.fcw = add(p + "mlp.fc.weight", {4 * C, C}, true);
    if (bias) y.fcb = add(p + "mlp.fc.bias", {4 * C}, false);
    y.fcprojw = add(p + "mlp.proj.weight", {C, 4 * C}, true);
    if (bias) y.fcprojb = add(p + "mlp.proj.bias", {C}, false);
    layers_.push_back(y);
  }
  lnfw_ = add("ln_f.weight", {C}, false);
  lnfb_ = add("ln_f.bias", {C}, false);
  head_ = cfg.tie_embeddings ? wte_ : add("lm_head.weight", {Vp, C}, true);
  params_ = AlignedBuffer(table_.total());
  grads_ = AlignedBuffer(table_.total());

  // ---- activations, sized for (B, T) ----
  const size_t BT = size_t(B) * T;
  size_t total = 0;
  auto alloc = [&](size_t n) {
    size_t off = total;
    total += (n + 15) / 16 * 16;
    return off;
  };
  encoded_ = alloc(BT * C);
  stream0_ = encoded_;  // the residual stream entering block 0
  if (cfg.emb_norm) {
    emb_mean_ = alloc(BT);
    emb_rstd_ = alloc(BT);
    stream0_ = alloc(BT * C);
  }
  if (cfg.value_residual) v0_ = alloc(BT * C);
  // One block's activations; with recompute every layer shares one set and keeps only its output.
  auto block_acts = [&](const Layer& y, int l) {
    LayerActs a;
    std::memset(&a, 0xff, sizeof a);
    a.ln1 = alloc(BT * C);
    a.ln1_mean = alloc(BT);
    a.ln1_rstd = alloc(BT);
    a.xa = cfg.token_shift ? alloc(BT * C) : a.ln1;
    a.qkv = alloc(BT * 3 * C);
    a.qkvp = qkv_processed(l) ? alloc(BT * 3 * C) : a.qkv;
    if (cfg.qk_norm) {
      a.qn_mean = alloc(BT * NH);
      a.qn_rstd = alloc(BT * NH);
      a.kn_mean = alloc(BT * NH);
      a.kn_rstd = alloc(BT * NH);
    }
    a.atty = alloc(BT * C);
    if (y.mixer == Mixer::kvm) {
      a.qh = alloc(BT * C);
      a.kh = alloc(BT * C);
      a.vh = alloc(BT * C);
      a.gpre = alloc(BT * NH);
      a.g = alloc(BT * NH);
      a.outh = alloc(BT * C);
    }
    a.lse = alloc(BT * NH);
    a.residual2 = alloc(BT * C);
    a.ln2 = alloc(BT * C);
    a.ln2_mean = alloc(BT);
    a.ln2_rstd = alloc(BT);
    a.xm = cfg.token_shift ? alloc(BT * C) : a.ln2;
    a.fch = alloc(BT * 4 * C);
    a.fch_act = alloc(BT * 4 * C);
    a.residual3 = alloc(BT * C);
    return a;
  };
  if (recompute_) {
    // the shared set must hold the largest block: a KVM one if any layer is KVM, with value
    // residual processing (a layer > 0) when there is one
    Layer big = layers_[0];
    for (const auto& y : layers_)
      if (y.mixer == Mixer::kvm) big = y;
    LayerActs shared = block_acts(big, L > 1 ? 1 : 0);
    for (int l = 0; l < L; l++) {
      LayerActs a = shared;
      if (!qkv_processed(l)) a.qkvp = a.qkv;
      a.residual3 = alloc(BT * C);
      lacts_.push_back(a);
    }
  } else {
    for (int l = 0; l < L; l++) lacts_.push_back(block_acts(layers_[l], l));
  }
  lnf_ = alloc(BT * C);
  lnf_mean_ = alloc(BT);
  lnf_rstd_ = alloc(BT);
  logits_off_ = alloc(BT * Vp);
  losses_ = alloc(BT);
  acts_ = AlignedBuffer(total);

  for (auto* b : {&s_.dres, &s_.dln, &s_.dxa, &s_.dtmp, &s_.datty}) *b = AlignedBuffer(BT * C);
  for (auto* b : {&s_.dqkvp, &s_.dqkv, &s_.dq3}) *b = AlignedBuffer(BT * 3 * C);
  for (auto* b : {&s_.dfch, &s_.dact}) *b = AlignedBuffer(BT * 4 * C);
  if (cfg.value_residual) s_.dv0 = AlignedBuffer(BT * C);
  kvm_.resize(size_t(L));
  for (int l = 0; l < L; l++) {
    if (layers_[l].mixer != Mixer::kvm) continue;
    kvm_make(l);
    if (s_.dqh.size() == 0) {
      for (auto* b : {&s_.dqh, &s_.dkh, &s_.dvh, &s_.douth}) *b = AlignedBuffer(BT * C);
      for (auto* b : {&s_.dg, &s_.dgpre}) *b = AlignedBuffer(BT * NH);
    }
  }
}

Model::~Model() = default;

bool Model::qkv_processed(int l) const {
  return cfg_.qk_norm || cfg_.pos == "rope" || (cfg_.value_residual && l > 0);
}

void Model::init(uint64_t seed) {
  Rng rng(seed);
  float* p = params_.data();
  params_.zero();
  const int C = cfg_.d_model, L = cfg_.n_layer;
  const float std_resid = cfg_.zero_init_out ? 0.0f : 0.02f / std::sqrt(2.0f * L);
  for (const auto& v : table_.views()) {
    bool is_norm_weight = v.name.find("ln_") != std::string::npos && v.name.ends_with(".weight");
    if (is_norm_weight || v.name.ends_with(".tau_front") || v.name.ends_with(".tau_state")) {
      for (size_t i = 0; i < v.size; i++) p[v.offset + i] = 1.0f;
    } else if (v.name.ends_with(".shift")) {
      // RWKV-4's time_mix: channel c of layer l mixes (c/C)^(1 - l/L) of the current token
      int l = std::stoi(v.name.substr(2));
      double ratio = 1.0 - double(l) / L;
      for (int c = 0; c < C; c++) p[v.offset + c] = float(std::pow(double(c) / C, ratio));
    } else if (v.name.ends_with("kvm.gate.weight")) {
      // PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
      const double bound = 1.0 / std::sqrt(double(C));
      for (size_t i = 0; i < v.size; i++) p[v.offset + i] = float((2.0 * rng.uniform() - 1.0) * bound);
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
  double attention = 0;  // q.k and p.v over the keys each query sees, averaged over the sequence
  for (const auto& y : layers_) {
    double keys = (T + 1) / 2.0;
    if (y.mixer == Mixer::swa) keys = std::min<double>(keys, y.window);
    if (y.mixer == Mixer::kvm) {
      const auto& kv = cfg_.kvm;
      keys = std::min<double>(keys, kv.window_chunks * kv.chunk + kv.min_len);
      matmul += 2 * C * cfg_.n_head;  // the merge gate
    }
    attention += 2 * 2 * C * keys;
  }
  return matmul + attention;
}

void Model::forward(const int* inputs, int B, int T) {
  const int C = cfg_.d_model, Vp = cfg_.padded_vocab_size, BT = B * T;
  if (B > maxB_ || T > maxT_) throw std::invalid_argument("Model::forward: batch larger than allocated");
  B_ = B, T_ = T, inputs_ = inputs;
  k::encoder_forward(A(encoded_), inputs, P(wte_), P(wpe_), B, T, C);
  if (cfg_.emb_norm)
    k::layernorm_forward(A(stream0_), A(emb_mean_), A(emb_rstd_), A(encoded_), P(lnew_), P(lneb_), BT, C);
  const float* residual = A(stream0_);
  for (int l = 0; l < int(layers_.size()); l++) {
    block_forward(l, residual);
    residual = A(lacts_[l].residual3);
  }
  k::layernorm_forward(A(lnf_), A(lnf_mean_), A(lnf_rstd_), residual, P(lnfw_), P(lnfb_), BT, C);
  k::matmul_forward(A(logits_off_), A(lnf_), P(head_), nullptr, BT, C, Vp);
}

float Model::loss(const int* targets, float dloss) {
  const int N = B_ * T_;
  float* losses = A(losses_);
  k::crossentropy_forward_backward(A(logits_off_), losses, targets, N, cfg_.vocab_size, cfg_.padded_vocab_size,
                                   dloss, -1);
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
  const int B = B_, T = T_, C = cfg_.d_model, Vp = cfg_.padded_vocab_size, BT = B * T, L = int(layers_.size());
  const size_t n = size_t(BT) * C;
  float* dres = s_.dres.data();  // d(residual stream), carried down through the blocks
  float* dln = s_.dln.data();
  std::memset(dres, 0, n * sizeof(float));
  std::memset(dln, 0, n * sizeof(float));
  if (cfg_.value_residual) s_.dv0.zero();
  const float* last = L == 0 ? A(stream0_) : A(lacts_.back().residual3);
  k::matmul_backward(dln, G(head_), nullptr, A(logits_off_), A(lnf_), P(head_), BT, C, Vp);
  k::layernorm_backward(dres, G(lnfw_), G(lnfb_), dln, last, P(lnfw_), A(lnf_mean_), A(lnf_rstd_), BT, C);
  for (int l = L - 1; l >= 0; l--) {
    const float* residual = l == 0 ? A(stream0_) : A(lacts_[l - 1].residual3);
    // with recompute the shared activations hold the last block's: recompute every other block
    if (recompute_ && l != L - 1) block_forward(l, residual);
    block_backward(l, residual, dres);
  }
  float* demb = dres;
  if (cfg_.emb_norm) {
    std::memset(dln, 0, n * sizeof(float));
    k::layernorm_backward(dln, G(lnew_), G(lneb_), dres, A(encoded_), P(lnew_), A(emb_mean_), A(emb_rstd_), BT, C);
    demb = dln;
  }
  k::encoder_backward(G(wte_), G(wpe_), demb, inputs_, B, T, C);
}
