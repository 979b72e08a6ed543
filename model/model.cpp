// The model's layout (parameters, activations), initialisation, and the parts outside the blocks:
// embedding (+ optional LayerNorm), final LayerNorm, head, loss. Blocks are in block.cpp.
#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "kernels/kernels.h"
#include "common/rng.h"
#include "parallel/tensor_parallel.h"

Model::Model(const config::ModelConfig& cfg, int B, int T, bool recompute_blocks, Communicator* tp, const Backend& be,
             Communicator* tp_device)
    : cfg_(cfg), be_(be), tp_(tp), tpd_(tp_device ? tp_device : tp), maxB_(B), maxT_(T), recompute_(recompute_blocks) {
  const int Vp = cfg.padded_vocab_size, C = cfg.d_model, L = cfg.n_layer, NH = cfg.n_head, hs = C / NH;
  if (cfg.mixers.empty()) throw std::invalid_argument("model.mixers: empty");
  // ---- tensor parallel: this rank's share of heads, MLP width and vocabulary ----
  const int TP = tp ? tp->size() : 1;
  tp_size_ = TP, tp_rank_ = tp ? tp->rank() : 0;
  auto divisible = [&](long long n, const char* key) {
    if (n % TP)
      throw std::invalid_argument(std::string(key) + " = " + std::to_string(n) +
                                  " is not divisible by parallel.tensor = " + std::to_string(TP));
  };
  divisible(NH, "model.n_head");
  divisible(Vp, "model.padded_vocab_size");
  divisible(4LL * C, "model.d_model*4");
  if (TP > 1 && !be.host && !tp_device)
    throw std::invalid_argument("Model: parallel.tensor > 1 on " + std::string(be.name) +
                                " needs a tensor-parallel communicator over device memory (NCCL)");
  if (tp_device && (tp_device->size() != TP || tp_device->rank() != tp_rank_))
    throw std::invalid_argument("Model: the device tensor-parallel communicator is not the ranks of tp");
  Ca_ = C / TP, NHl_ = NH / TP, Fl_ = 4 * C / TP, Vl_ = Vp / TP;
  const int Ca = Ca_, NHl = NHl_, Fl = Fl_, Vl = Vl_;
  const bool rope = cfg.pos == config::Pos::rope;
  const int R = cfg.rope_dims ? cfg.rope_dims : hs / 2;
  const int R_swa = cfg.swa_rope_dims ? cfg.swa_rope_dims : R;
  const bool bias = cfg.bias;

  // ---- parameters, in the order of the forward pass ----
  auto add = [&](const std::string& name, std::vector<int> shape, bool decay) {
    return table_.add(name, std::move(shape), decay).offset;
  };
  // a tensor split along dim across the tensor ranks (its shape is the shard's); blocks: see TensorView
  auto add_sharded = [&](const std::string& name, std::vector<int> shape, bool decay, int dim, int blocks = 1) {
    if (TP == 1) return add(name, std::move(shape), decay);
    return table_.add(name, std::move(shape), decay, dim, TP, tp_rank_, blocks).offset;
  };
  wte_ = add_sharded("wte", {Vl, C}, true, 0);
  if (!rope) wpe_ = add("wpe", {cfg.max_seq_len, C}, true);
  if (cfg.emb_norm) {
    lnew_ = add("ln_e.weight", {C}, false);
    lneb_ = add("ln_e.bias", {C}, false);
  }
  for (int l = 0; l < L; l++) {
    std::string p = "h." + std::to_string(l) + ".";
    Layer y;
    std::memset(&y, 0xff, sizeof y);  // every offset kNone until added
    y.mixer = cfg.mixers[size_t(l) % cfg.mixers.size()];
    y.window = y.mixer == Mixer::swa ? cfg.swa_window : 0;
    y.rope_dims = rope ? (y.mixer == Mixer::swa ? R_swa : R) : 0;
    y.ln1w = add(p + "ln_1.weight", {C}, false);
    y.ln1b = add(p + "ln_1.bias", {C}, false);
    if (cfg.token_shift) y.shift_att = add(p + "attn.shift", {C}, false);
    y.qkvw = add_sharded(p + "attn.qkv.weight", {3 * Ca, C}, true, 0, 3);
    if (bias) y.qkvb = add_sharded(p + "attn.qkv.bias", {3 * Ca}, false, 0, 3);
    if (cfg.qk_norm) {
      y.qnw = add(p + "attn.ln_q.weight", {hs}, false);
      y.qnb = add(p + "attn.ln_q.bias", {hs}, false);
      y.knw = add(p + "attn.ln_k.weight", {hs}, false);
      y.knb = add(p + "attn.ln_k.bias", {hs}, false);
    }
    if (y.mixer == Mixer::kvm) {
      y.lnsw = add(p + "kvm.ln_s.weight", {hs}, false);
      y.lnsb = add(p + "kvm.ln_s.bias", {hs}, false);
      y.gatew = add_sharded(p + "kvm.gate.weight", {NHl, C}, true, 0);
      y.tau_front = add_sharded(p + "kvm.tau_front", {NHl}, false, 0);
      y.tau_state = add_sharded(p + "kvm.tau_state", {NHl}, false, 0);
    }
    y.projw = add_sharded(p + "attn.proj.weight", {C, Ca}, true, 1);
    if (bias) y.projb = add(p + "attn.proj.bias", {C}, false);
    y.ln2w = add(p + "ln_2.weight", {C}, false);
    y.ln2b = add(p + "ln_2.bias", {C}, false);
    if (cfg.token_shift) y.shift_mlp = add(p + "mlp.shift", {C}, false);
    y.fcw = add_sharded(p + "mlp.fc.weight", {Fl, C}, true, 0);
    if (bias) y.fcb = add_sharded(p + "mlp.fc.bias", {Fl}, false, 0);
    y.fcprojw = add_sharded(p + "mlp.proj.weight", {C, Fl}, true, 1);
    if (bias) y.fcprojb = add(p + "mlp.proj.bias", {C}, false);
    layers_.push_back(y);
  }
  lnfw_ = add("ln_f.weight", {C}, false);
  lnfb_ = add("ln_f.bias", {C}, false);
  head_ = cfg.tie_embeddings ? wte_ : add_sharded("lm_head.weight", {Vl, C}, true, 0);
  params_ = DeviceBuffer(be, table_.total());
  grads_ = DeviceBuffer(be, table_.total());
  stale_.assign(table_.views().size(), 0);

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
  if (cfg.value_residual) v0_ = alloc(BT * Ca);
  // One block's activations; with recompute every layer shares one set and keeps only its output.
  auto block_acts = [&](const Layer& y, int l) {
    LayerActs a;
    std::memset(&a, 0xff, sizeof a);
    a.ln1 = alloc(BT * C);
    a.ln1_mean = alloc(BT);
    a.ln1_rstd = alloc(BT);
    a.xa = cfg.token_shift ? alloc(BT * C) : a.ln1;
    a.qkv = alloc(BT * 3 * Ca);
    a.qkvp = qkv_processed(l) ? alloc(BT * 3 * Ca) : a.qkv;
    if (cfg.qk_norm) {
      a.qn_mean = alloc(BT * NHl);
      a.qn_rstd = alloc(BT * NHl);
      a.kn_mean = alloc(BT * NHl);
      a.kn_rstd = alloc(BT * NHl);
    }
    a.atty = alloc(BT * Ca);
    if (y.mixer == Mixer::kvm) {
      a.qh = alloc(BT * Ca);
      a.kh = alloc(BT * Ca);
      a.vh = alloc(BT * Ca);
      a.gpre = alloc(BT * NHl);
      a.g = alloc(BT * NHl);
      a.outh = alloc(BT * Ca);
    }
    a.lse = alloc(BT * NHl);
    a.residual2 = alloc(BT * C);
    a.ln2 = alloc(BT * C);
    a.ln2_mean = alloc(BT);
    a.ln2_rstd = alloc(BT);
    a.xm = cfg.token_shift ? alloc(BT * C) : a.ln2;
    a.fch = alloc(BT * Fl);
    a.fch_act = alloc(BT * Fl);
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
  logits_off_ = alloc(BT * Vl);
  losses_ = alloc(BT);
  acts_ = DeviceBuffer(be, total);
  if (!be.host) tokens_ = DeviceBuffer(be, 2 * BT);

  for (auto* b : {&s_.dres, &s_.dln, &s_.dxa, &s_.dtmp}) *b = DeviceBuffer(be, BT * C);
  s_.datty = DeviceBuffer(be, BT * Ca);
  for (auto* b : {&s_.dqkvp, &s_.dqkv, &s_.dq3}) *b = DeviceBuffer(be, BT * 3 * Ca);
  s_.dact = DeviceBuffer(be, BT * Fl);
  if (cfg.value_residual) s_.dv0 = DeviceBuffer(be, BT * Ca);
  if (TP > 1) {
    for (int i = 0; i < kRedSlots; i++) red_off_[i] = red_extra_, red_extra_ += size_t(i == kRedShift ? C : hs);
    red_extra_ = (red_extra_ + 15) / 16 * 16;
    tpred_ = DeviceBuffer(be, red_extra_ + BT * C);
    tpce_ = DeviceBuffer(be, BT * (3 + size_t(TP)));
  }
  kvm_.resize(size_t(L));
  for (int l = 0; l < L; l++) {
    if (layers_[l].mixer != Mixer::kvm) continue;
    kvm_make(l);
    if (s_.dqh.size() == 0) {
      for (auto* b : {&s_.dqh, &s_.dkh, &s_.dvh, &s_.douth}) *b = DeviceBuffer(be, BT * Ca);
      for (auto* b : {&s_.dg, &s_.dgbt, &s_.dgpre}) *b = DeviceBuffer(be, BT * NHl);
    }
  }
}

Model::~Model() = default;

bool Model::qkv_processed(int l) const {
  return cfg_.qk_norm || cfg_.pos == config::Pos::rope || (cfg_.value_residual && l > 0);
}

void Model::init(uint64_t seed) {
  Rng rng(seed);
  std::vector<float> copy;
  float* p = params_host(copy);
  std::fill(p, p + params_.size(), 0.0f);
  const int C = cfg_.d_model, L = cfg_.n_layer;
  const float std_resid = cfg_.zero_init_out ? 0.0f : 0.02f / std::sqrt(2.0f * L);
  std::vector<float> whole;  // a sharded tensor in full, drawn as with TP = 1, then this rank's shard kept
  for (const auto& v : table_.views()) {
    const bool sharded = tp::is_sharded(v);
    const size_t size = tp::full_size(v);
    if (sharded) whole.assign(size, 0.0f);
    float* dst = sharded ? whole.data() : p + v.offset;
    bool is_norm_weight = v.name.find("ln_") != std::string::npos && v.name.ends_with(".weight");
    if (is_norm_weight || v.name.ends_with(".tau_front") || v.name.ends_with(".tau_state")) {
      for (size_t i = 0; i < size; i++) dst[i] = 1.0f;
    } else if (v.name.ends_with(".shift")) {
      // RWKV-4's time_mix: channel c of layer l mixes (c/C)^(1 - l/L) of the current token
      int l = std::stoi(v.name.substr(2));
      double ratio = 1.0 - double(l) / L;
      for (int c = 0; c < C; c++) dst[c] = float(std::pow(double(c) / C, ratio));
    } else if (v.name.ends_with("kvm.gate.weight")) {
      // PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
      const double bound = 1.0 / std::sqrt(double(C));
      for (size_t i = 0; i < size; i++) dst[i] = float((2.0 * rng.uniform() - 1.0) * bound);
    } else if (v.decay) {
      bool resid = v.name.ends_with("attn.proj.weight") || v.name.ends_with("mlp.proj.weight");
      float std = resid ? std_resid : 0.02f;
      // embedding and head rows past the real vocabulary stay zero: no token ever selects them
      size_t n = (v.name == "wte" || v.name == "lm_head.weight") ? size_t(cfg_.vocab_size) * cfg_.d_model : size;
      fill_normal(dst, n, std, rng);
    }
    if (sharded) tp::extract(v, whole.data(), p + v.offset);
  }
  params_from_host(p);
}

float* Model::params_host(std::vector<float>& copy) {
  if (be_.host) return params_.data();
  copy.resize(params_.size());
  be_.to_host(copy.data(), params_.data(), params_.bytes());
  return copy.data();
}

void Model::params_from_host(const float* host) {
  if (host != params_.data()) be_.from_host(params_.data(), host, params_.bytes());
}

const float* Model::logits_host(size_t row, size_t rows, std::vector<float>& copy) const {
  const float* p = logits() + row * size_t(Vl_);
  if (be_.host) return p;
  copy.resize(rows * size_t(Vl_));
  be_.to_host(copy.data(), p, copy.size() * sizeof(float));
  return copy.data();
}

const int* Model::tokens_for_backend(const int* host, int slot, size_t n) {
  if (be_.host) return host;
  int* dst = reinterpret_cast<int*>(tokens_.data()) + size_t(slot) * maxB_ * maxT_;
  be_.from_host(dst, host, n * sizeof(int));
  return dst;
}

size_t Model::num_params() const {
  size_t n = 0;
  for (const auto& v : table_.views()) n += v.size;
  return n;
}

double Model::flops_per_token(int T) const {
  // 2N + attention, so that forward and backward make 6N + 3 x attention, N counted as llm.c and
  // PaLM count it: every parameter of the whole model (biases, norms and wpe too; the tied
  // embedding once, as the head) except an untied input embedding, which is only a lookup
  double params = 0;
  for (const auto& v : table_.views())
    if (v.offset != wte_ || head_ == wte_) params += double(tp::full_size(v));
  const double C = cfg_.d_model;
  double attention = 0;  // q.k and p.v over the keys each query sees, averaged over the sequence
  for (const auto& y : layers_) {
    double keys = (T + 1) / 2.0;
    const auto& kv = cfg_.kvm;
    switch (y.mixer) {
      case Mixer::attn: break;
      case Mixer::swa: keys = std::min<double>(keys, y.window); break;
      case Mixer::kvm: keys = std::min<double>(keys, kv.window_chunks * kv.chunk + kv.min_len); break;
    }
    attention += 2 * 2 * C * keys;
  }
  return 2 * params + attention;
}

void Model::use_bf16() {
  if (!bf16()) params16_ = DeviceBuffer(be_, (params_.size() + 1) / 2);
}

void Model::refresh_bf16(uint64_t seed, uint64_t step) {
  kernels::bf16* out = reinterpret_cast<kernels::bf16*>(params16_.data());
  const auto& views = table_.views();
  for (size_t j = 0; j < views.size(); j++) {
    const TensorView& v = views[j];
    tp::for_each_run(v, v.shard_rank, [&](size_t local, size_t full, size_t n) {
      be_.bf16_round_stochastic(out + v.offset + local, P(v.offset) + local, n, seed, step, (uint64_t(j) << 40) + full);
    });
  }
}

void Model::linear_forward(float* out, const float* inp, size_t w, size_t b, int N, int IC, int OC) {
  if (bf16()) be_.matmul_forward_bf16(out, inp, P16(w), P(b), N, IC, OC);
  else be_.matmul_forward(out, inp, P(w), P(b), N, IC, OC);
}

void Model::linear_gelu_forward(float* out, float* pre, const float* inp, size_t w, size_t b, int N, int IC, int OC) {
  if (bf16()) be_.matmul_gelu_forward_bf16(out, pre, inp, P16(w), P(b), N, IC, OC);
  else be_.matmul_gelu_forward(out, pre, inp, P(w), P(b), N, IC, OC);
}

void Model::linear_backward(float* dinp, Dinp mode, size_t w, size_t b, const float* dout, const float* inp, int N,
                            int IC, int OC) {
  // a weight and its bias are written by this call only, so they are stale together
  const bool accumulate = !claim_stale(w), add_dinp = mode == Dinp::accumulate;
  float* dw = grads_.data() + w;
  float* db = b == kNone ? nullptr : grads_.data() + b;
  if (db && claim_stale(b) == accumulate) throw std::logic_error("Model::linear_backward: weight and bias gradients out of step");
  if (bf16()) be_.matmul_backward_bf16(dinp, dw, db, dout, inp, P16(w), N, IC, OC, add_dinp, accumulate);
  else be_.matmul_backward(dinp, dw, db, dout, inp, P(w), N, IC, OC, add_dinp, accumulate);
}

namespace {
// Index of the view that starts at `off` (views are in offset order).
size_t view_index(const TensorTable& table, size_t off) {
  const auto& views = table.views();
  auto it = std::lower_bound(views.begin(), views.end(), off, [](const TensorView& v, size_t o) { return v.offset < o; });
  if (it == views.end() || it->offset != off) throw std::logic_error("Model: no parameter tensor at offset " + std::to_string(off));
  return size_t(it - views.begin());
}
}  // namespace

bool Model::claim_stale(size_t off) {
  char& s = stale_[view_index(table_, off)];
  const bool was = s;
  s = 0;
  return was;
}

float* Model::zero_if_stale(size_t j) {
  const TensorView& v = table_.views()[j];
  if (stale_[j]) be_.zero(grads_.data() + v.offset, v.size * sizeof(float));
  stale_[j] = 0;
  return grads_.data() + v.offset;
}

float* Model::G(size_t off) { return off == kNone ? nullptr : zero_if_stale(view_index(table_, off)); }

void Model::zero_stale(size_t begin, size_t end) {
  const auto& views = table_.views();
  for (size_t j = 0; j < views.size(); j++)
    if (views[j].offset >= begin && views[j].offset < end) zero_if_stale(j);
}

void Model::row_parallel_forward(float* out, const float* inp, size_t w, size_t b, int BT, int IC) {
  const int C = cfg_.d_model;
  if (tp_size_ == 1) return linear_forward(out, inp, w, b, BT, IC, C);
  linear_forward(out, inp, w, kNone, BT, IC, C);
  tp_sum(out, size_t(BT) * C);
  if (const float* bias = P(b)) be_.axpby_rows(out, bias, 1.0f, 1.0f, size_t(BT), C, size_t(C), 0);
}

float* Model::partial_grad(size_t off, RedSlot slot) {
  if (off == kNone) return nullptr;
  return tp_size_ == 1 ? G(off) : tpred_.data() + red_off_[slot];
}

void Model::red_begin(size_t n) { be_.zero(tpred_.data(), (red_extra_ + n) * sizeof(float)); }

void Model::red_finish(size_t n, const size_t* dst) {
  tp_sum(tpred_.data(), red_extra_ + n);
  const int C = cfg_.d_model, hs = C / cfg_.n_head;
  for (int s = 0; s < kRedSlots; s++) {
    if (dst[s] == kNone) continue;
    const int width = s == kRedShift ? C : hs;
    be_.axpby_rows(G(dst[s]), tpred_.data() + red_off_[s], 1.0f, 1.0f, 1, width, size_t(width), size_t(width));
  }
}

void Model::forward(const int* inputs, int B, int T) {
  const int C = cfg_.d_model, Vl = Vl_, BT = B * T;
  if (B > maxB_ || T > maxT_) throw std::invalid_argument("Model::forward: batch larger than allocated");
  B_ = B, T_ = T;
  inputs_be_ = tokens_for_backend(inputs, 0, size_t(BT));
  // this rank's vocabulary rows plus positions; under tensor parallelism zero rows for the tokens
  // it does not own, summed over the ranks (exactly the owner's row: the others add zeros)
  be_.encoder_forward(A(encoded_), inputs_be_, P(wte_), P(wpe_), B, T, C, tp_rank_ * Vl, Vl);
  if (tp_size_ > 1) tp_sum(A(encoded_), size_t(BT) * C);
  if (cfg_.emb_norm)
    be_.layernorm_forward(A(stream0_), A(emb_mean_), A(emb_rstd_), A(encoded_), P(lnew_), P(lneb_), BT, C);
  const float* residual = A(stream0_);
  for (int l = 0; l < int(layers_.size()); l++) {
    block_forward(l, residual);
    residual = A(lacts_[l].residual3);
  }
  be_.layernorm_forward(A(lnf_), A(lnf_mean_), A(lnf_rstd_), residual, P(lnfw_), P(lnfb_), BT, C);
  linear_forward(A(logits_off_), A(lnf_), head_, kNone, BT, C, Vl);
}

float Model::loss(const int* targets, float dloss) {
  const int N = B_ * T_, V = cfg_.vocab_size;
  float* losses = A(losses_);
  float* logits = A(logits_off_);
  const int* targets_be = tokens_for_backend(targets, 1, size_t(N));
  if (tp_size_ == 1) {
    be_.crossentropy_forward_backward(logits, losses, targets_be, N, V, cfg_.padded_vocab_size, dloss, -1);
  } else {
    // vocabulary-parallel cross-entropy: the global row max (all-gather of the local ones), then
    // the sum of exps and the target's logit (from its owner) in one all-reduce; the gradient
    // softmax - onehot stays local. Columns past the real vocabulary never take part.
    const int Vl = Vl_, v0 = tp_rank_ * Vl;
    const size_t n = size_t(N);
    float* mx = tpce_.data();   // (N) this rank's row maxima, then the global ones
    float* sums = mx + n;       // (2, N) sums of exps, target logits
    float* mxs = sums + 2 * n;  // (TP, N) every rank's row maxima
    be_.crossentropy_shard_max(mx, logits, N, V, v0, Vl);
    tpd_->all_gather(mx, mxs, n);
    be_.crossentropy_shard_sums(sums, mx, mxs, logits, targets_be, N, tp_size_, V, v0, Vl, -1);
    tp_sum(sums, 2 * n);
    be_.crossentropy_shard_finish(logits, losses, mx, sums, targets_be, N, V, v0, Vl, dloss, -1);
  }
  std::vector<float> copy;
  const float* host_losses = losses;
  if (!be_.host) {
    copy.resize(size_t(N));
    be_.to_host(copy.data(), losses, copy.size() * sizeof(float));
    host_losses = copy.data();
  }
  double sum = 0;
  int count = 0;
  for (int i = 0; i < N; i++) {
    if (targets[i] == -1) continue;
    sum += host_losses[i];
    count++;
  }
  return count ? float(sum / count) : 0.0f;
}

void Model::backward() {
  const int B = B_, T = T_, C = cfg_.d_model, Vl = Vl_, BT = B * T, L = int(layers_.size());
  const size_t n = size_t(BT) * C;
  float* dres = s_.dres.data();  // d(residual stream), carried down through the blocks
  float* dln = s_.dln.data();
  be_.zero(dres, n * sizeof(float));
  if (cfg_.value_residual) s_.dv0.zero();
  // The gradients are final from the top of the buffer down (the layout is in forward order):
  // ln_f and an untied head, then each block, then the embedding (with a tied head).
  size_t final_from = table_.total();
  auto grads_final_from = [&](size_t begin) {
    zero_stale(begin, final_from);
    if (grads_ready_) grads_ready_(begin, final_from);
    final_from = begin;
  };
  const float* last = L == 0 ? A(stream0_) : A(lacts_.back().residual3);
  linear_backward(dln, Dinp::overwrite, head_, kNone, A(logits_off_), A(lnf_), BT, C, Vl);
  if (tp_size_ > 1) tp_sum(dln, n);  // each rank's vocabulary slice gave part of d(ln_f output)
  be_.layernorm_backward(dres, G(lnfw_), G(lnfb_), dln, last, P(lnfw_), A(lnf_mean_), A(lnf_rstd_), BT, C);
  grads_final_from(lnfw_);
  for (int l = L - 1; l >= 0; l--) {
    const float* residual = l == 0 ? A(stream0_) : A(lacts_[l - 1].residual3);
    // with recompute the shared activations hold the last block's: recompute every other block
    if (recompute_ && l != L - 1) block_forward(l, residual);
    block_backward(l, residual, dres);
    grads_final_from(layers_[l].ln1w);  // a block's first tensor
  }
  float* demb = dres;
  if (cfg_.emb_norm) {
    be_.zero(dln, n * sizeof(float));
    be_.layernorm_backward(dln, G(lnew_), G(lneb_), dres, A(encoded_), P(lnew_), A(emb_mean_), A(emb_rstd_), BT, C);
    demb = dln;
  }
  // demb is the same on every tensor rank: each takes its own vocabulary rows, and all the positions
  be_.encoder_backward(G(wte_), G(wpe_), demb, inputs_be_, B, T, C, tp_rank_ * Vl, Vl);
  grads_final_from(0);
}
