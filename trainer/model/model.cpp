// The model's buffers (parameters and gradients in layout.h's order, activations, backward
// scratch), and the parts outside the blocks: embedding (+ optional LayerNorm), final LayerNorm,
// head, loss; the linear layers in the model's precision. Blocks are in block.cpp.
#include "trainer/model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "kernels/kernels.h"
#include "trainer/parallel/tensor_parallel.h"

Model::Model(const config::ModelConfig& cfg, int B, int T, bool recompute_blocks, Communicator* tp, const Backend& be,
             Communicator* tp_device)
    : cfg_(cfg), be_(be), tp_(tp), tpd_(tp_device ? tp_device : tp), maxB_(B), maxT_(T), recompute_(recompute_blocks) {
  // ---- tensor parallel: this rank's share of heads, MLP width and vocabulary ----
  const int TP = tp ? tp->size() : 1;
  tp_size_ = TP, tp_rank_ = tp ? tp->rank() : 0;
  lay_ = declare_layout(cfg, TP, tp_rank_);
  if (TP > 1 && !be.host && !tp_device)
    throw std::invalid_argument("Model: parallel.tensor > 1 on " + std::string(be.name) +
                                " needs a tensor-parallel communicator over device memory (NCCL)");
  if (tp_device && (tp_device->size() != TP || tp_device->rank() != tp_rank_))
    throw std::invalid_argument("Model: the device tensor-parallel communicator is not the ranks of tp");
  const int C = cfg.d_model, L = cfg.n_layer, hs = C / cfg.n_head;
  Ca_ = C / TP, NHl_ = cfg.n_head / TP, Fl_ = 4 * C / TP, Vl_ = cfg.padded_vocab_size / TP;
  NKVl_ = kv_heads(cfg) / TP, Ckv_ = NKVl_ * hs, W_ = Ca_ + 2 * Ckv_;
  const int Ca = Ca_, NHl = NHl_, Fl = Fl_, Ckv = Ckv_, W = W_;
  params_ = DeviceBuffer(be, lay_.table.total());
  grads_ = DeviceBuffer(be, lay_.table.total());
  stale_.assign(lay_.table.views().size(), 0);
  acts_ = Activations(be, cfg, lay_, TP, B, T, recompute_);
  const size_t BT = size_t(B) * T;
  if (!be.host) tokens_ = DeviceBuffer(be, 2 * BT);

  for (auto* b : {&s_.dres, &s_.dln, &s_.dxa, &s_.dtmp}) *b = DeviceBuffer(be, BT * C);
  s_.datty = DeviceBuffer(be, BT * Ca);
  for (auto* b : {&s_.dqkvp, &s_.dqkv, &s_.dq3}) *b = DeviceBuffer(be, BT * W);
  if (cfg.qkv_shift) s_.dqkv2 = DeviceBuffer(be, BT * W);
  if (gqa()) s_.dqkvx = DeviceBuffer(be, BT * 3 * Ca);
  s_.dact = DeviceBuffer(be, BT * Fl);
  if (cfg.value_residual) s_.dv0 = DeviceBuffer(be, BT * Ckv);
  if (cfg.value_residual && cfg.value_residual_mode != config::ValueResidualMode::average)
    s_.dvres = DeviceBuffer(be, BT * Ckv);
  if (cfg.value_residual && cfg.value_residual_mode == config::ValueResidualMode::rwkv) {
    s_.dvr_z = DeviceBuffer(be, BT * Ckv);
    s_.dvr_h = DeviceBuffer(be, BT * size_t(value_gate_rank(C)));
  }
  s_.danchor.resize(size_t(L));
  for (const LayerParams& y : lay_.layers) {
    if (y.anchor <= 0 || s_.danchor[size_t(y.anchor)].size()) continue;
    s_.danchor[size_t(y.anchor)] = DeviceBuffer(be, BT * Ckv);
    if (!s_.dx0.size()) s_.dx0 = DeviceBuffer(be, BT * C);
  }
  if (TP > 1) {
    const bool rwkv = cfg.value_residual && cfg.value_residual_mode == config::ValueResidualMode::rwkv;
    for (int i = 0; i < kRedSlots; i++) {
      red_width_[i] = i == kRedShift ? size_t(C)
                      : i == kRedVrDown ? (rwkv ? size_t(value_gate_rank(C)) * C : 0)
                      : i == kRedVrLambda ? 1
                                          : size_t(hs);
      red_off_[i] = red_extra_, red_extra_ += red_width_[i];
    }
    red_extra_ = (red_extra_ + 15) / 16 * 16;
    tpred_ = DeviceBuffer(be, red_extra_ + BT * C);
    tpce_ = DeviceBuffer(be, BT * (3 + size_t(TP)));
  }
  kvm_.resize(size_t(L));
  for (int l = 0; l < L; l++) {
    if (lay_.layers[l].mixer != Mixer::kvm) continue;
    kvm_make(l);
    if (s_.dqh.size() == 0) {
      for (auto* b : {&s_.dqh, &s_.dkh, &s_.dvh, &s_.douth}) *b = DeviceBuffer(be, BT * Ca);
      for (auto* b : {&s_.dg, &s_.dgbt, &s_.dgpre}) *b = DeviceBuffer(be, BT * NHl);
      if (gqa()) s_.dgkv = DeviceBuffer(be, BT * NKVl_);
    }
  }
}

Model::~Model() = default;

void Model::init(uint64_t seed) {
  std::vector<float> copy;
  float* p = params_host(copy);
  std::fill(p, p + params_.size(), 0.0f);  // the padding between tensors too
  init_params(p, lay_, cfg_, seed);
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
  for (const auto& v : lay_.table.views()) n += v.size;
  return n;
}

double Model::flops_per_token(int T) const {
  // 2N + attention, so that forward and backward make 6N + 3 x attention, N counted as llm.c and
  // PaLM count it: every parameter of the whole model (biases, norms and wpe too; the tied
  // embedding once, as the head) except an untied input embedding, which is only a lookup
  double params = 0;
  for (const auto& v : lay_.table.views())
    if (v.offset != lay_.wte.off || lay_.head.off == lay_.wte.off) params += double(tp::full_size(v));
  const double C = cfg_.d_model;
  double attention = 0;  // q.k and p.v over the keys each query sees, averaged over the sequence
  for (const auto& y : lay_.layers) {
    double keys = (T + 1) / 2.0;
    const auto& kv = cfg_.kvm;
    switch (y.mixer) {
      case Mixer::attn: break;
      case Mixer::swa:
      case Mixer::bswa: keys = std::min<double>(keys, y.window); break;
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
  const auto& views = lay_.table.views();
  for (size_t j = 0; j < views.size(); j++) {
    const TensorView& v = views[j];
    tp::for_each_run(v, v.shard_rank, [&](size_t local, size_t full, size_t n) {
      be_.bf16_round_stochastic(out + v.offset + local, params_.data() + v.offset + local, n, seed, step, (uint64_t(j) << 40) + full);
    });
  }
}

void Model::linear_forward(float* out, const float* inp, Param w, Param b, int N, int IC, int OC) {
  if (bf16()) be_.matmul_forward_bf16(out, inp, P16(w), P(b), N, IC, OC);
  else be_.matmul_forward(out, inp, P(w), P(b), N, IC, OC);
}

void Model::linear_gelu_forward(float* out, float* pre, const float* inp, Param w, Param b, int N, int IC, int OC) {
  if (bf16()) be_.matmul_gelu_forward_bf16(out, pre, inp, P16(w), P(b), N, IC, OC);
  else be_.matmul_gelu_forward(out, pre, inp, P(w), P(b), N, IC, OC);
}

void Model::linear_backward(float* dinp, Dinp mode, Param w, Param b, const float* dout, const float* inp, int N,
                            int IC, int OC) {
  // a weight and its bias are written by this call only, so they are stale together
  const bool accumulate = !claim_stale(w), add_dinp = mode == Dinp::accumulate;
  float* dw = grads_.data() + w.off;
  float* db = b ? grads_.data() + b.off : nullptr;
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

bool Model::claim_stale(Param t) {
  char& s = stale_[view_index(lay_.table, t.off)];
  const bool was = s;
  s = 0;
  return was;
}

float* Model::zero_if_stale(size_t j) {
  const TensorView& v = lay_.table.views()[j];
  if (stale_[j]) be_.zero(grads_.data() + v.offset, v.size * sizeof(float));
  stale_[j] = 0;
  return grads_.data() + v.offset;
}

float* Model::G(Param t) { return t ? zero_if_stale(view_index(lay_.table, t.off)) : nullptr; }

void Model::zero_stale(size_t begin, size_t end) {
  const auto& views = lay_.table.views();
  for (size_t j = 0; j < views.size(); j++)
    if (views[j].offset >= begin && views[j].offset < end) zero_if_stale(j);
}

void Model::row_parallel_forward(float* out, const float* inp, Param w, Param b, int BT, int IC) {
  const int C = cfg_.d_model;
  if (tp_size_ == 1) return linear_forward(out, inp, w, b, BT, IC, C);
  linear_forward(out, inp, w, Param{}, BT, IC, C);
  tp_sum(out, size_t(BT) * C);
  if (const float* bias = P(b)) be_.axpby_rows(out, bias, 1.0f, 1.0f, size_t(BT), C, size_t(C), 0);
}

float* Model::partial_grad(Param t, RedSlot slot) {
  if (!t) return nullptr;
  return tp_size_ == 1 ? G(t) : tpred_.data() + red_off_[slot];
}

void Model::red_begin(size_t n) { be_.zero(tpred_.data(), (red_extra_ + n) * sizeof(float)); }

void Model::red_finish(size_t n, const Param* dst) {
  tp_sum(tpred_.data(), red_extra_ + n);
  for (int s = 0; s < kRedSlots; s++) {
    if (!dst[s]) continue;
    const int width = int(red_width_[s]);
    be_.axpby_rows(G(dst[s]), tpred_.data() + red_off_[s], 1.0f, 1.0f, 1, width, size_t(width), size_t(width));
  }
}

void Model::embed(const Pass& p, const int* tokens_be) {
  const int C = cfg_.d_model, Vl = Vl_, BT = p.B * p.T;
  Activations& a = p.acts;
  // this rank's vocabulary rows plus positions [pos0, pos0+T); under tensor parallelism zero rows
  // for the tokens it does not own, summed over the ranks (exactly the owner's row: the others add zeros)
  const float* wpe = lay_.wpe ? P(lay_.wpe) + size_t(p.pos0) * C : nullptr;
  be_.encoder_forward(a.encoded, tokens_be, P(lay_.wte), wpe, p.B, p.T, C, tp_rank_ * Vl, Vl);
  if (tp_size_ > 1) tp_sum(a.encoded, size_t(BT) * C);
  if (cfg_.emb_norm)
    be_.layernorm_forward(a.stream0, a.emb_mean, a.emb_rstd, a.encoded, P(lay_.lnew), P(lay_.lneb), BT, C);
}

void Model::head(const Pass& p, const float* residual) {
  const int C = cfg_.d_model, BT = p.B * p.T;
  Activations& a = p.acts;
  be_.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, residual, P(lay_.lnfw), P(lay_.lnfb), BT, C);
  linear_forward(a.logits, a.lnf, lay_.head, Param{}, BT, C, Vl_);
}

void Model::anchors_forward(const Pass& p) {
  const int C = cfg_.d_model, Ckv = Ckv_, BT = p.B * p.T;
  const size_t vrow = size_t(Ca_ + Ckv_);  // the first v row of qkv.weight
  for (size_t f = 1; f < p.acts.anchors.size(); f++) {
    const Activations::Anchor& an = p.acts.anchors[f];
    if (!an.v) continue;
    // layer f's plain value projection of its own ln_1 of the embedding output: the v rows of its qkv
    const LayerParams& w = lay_.layers[f];
    be_.layernorm_forward(an.ln, an.mean, an.rstd, p.acts.stream0, P(w.ln1w), P(w.ln1b), BT, C);
    const float* bias = w.qkvb ? P(w.qkvb) + vrow : nullptr;
    if (bf16()) be_.matmul_forward_bf16(an.v, an.ln, P16(w.qkvw) + vrow * C, bias, BT, C, Ckv);
    else be_.matmul_forward(an.v, an.ln, P(w.qkvw) + vrow * C, bias, BT, C, Ckv);
  }
}

void Model::anchor_backward(int f) {
  const int C = cfg_.d_model, Ckv = Ckv_, BT = B_ * T_;
  const size_t vrow = size_t(Ca_ + Ckv_);
  const Activations::Anchor& an = acts_.anchors[size_t(f)];
  const LayerParams& w = lay_.layers[f];
  const float* dv = s_.danchor[size_t(f)].data();
  float* dln = s_.dln.data();
  // block f's backward has written its qkv and ln_1 gradients: these add to them
  float* dw = G(w.qkvw) + vrow * C;
  float* db = w.qkvb ? G(w.qkvb) + vrow : nullptr;
  if (bf16()) be_.matmul_backward_bf16(dln, dw, db, dv, an.ln, P16(w.qkvw) + vrow * C, BT, C, Ckv, false, true);
  else be_.matmul_backward(dln, dw, db, dv, an.ln, P(w.qkvw) + vrow * C, BT, C, Ckv, false, true);
  if (tp_size_ > 1) tp_sum(dln, size_t(BT) * C);  // each rank's heads gave part of d(ln_1 of stream0)
  be_.layernorm_backward(s_.dx0.data(), G(w.ln1w), G(w.ln1b), dln, acts_.stream0, P(w.ln1w), an.mean, an.rstd, BT, C);
}

void Model::forward(const int* inputs, int B, int T) {
  if (B > maxB_ || T > maxT_) throw std::invalid_argument("Model::forward: batch larger than allocated");
  B_ = B, T_ = T;
  inputs_be_ = tokens_for_backend(inputs, 0, size_t(B) * T);
  const Pass p = train_pass();
  embed(p, inputs_be_);
  anchors_forward(p);
  const float* residual = acts_.stream0;
  for (int l = 0; l < int(lay_.layers.size()); l++) {
    block_forward(l, residual, p);
    residual = acts_.layers[l].residual3;
  }
  head(p, residual);
}

float Model::loss(const int* targets, float dloss) {
  const int N = B_ * T_, V = softmax_width();
  float* losses = acts_.losses;
  float* logits = acts_.logits;
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
  const int B = B_, T = T_, C = cfg_.d_model, Vl = Vl_, BT = B * T, L = int(lay_.layers.size());
  const size_t n = size_t(BT) * C;
  float* dres = s_.dres.data();  // d(residual stream), carried down through the blocks
  float* dln = s_.dln.data();
  be_.zero(dres, n * sizeof(float));
  if (cfg_.value_residual) s_.dv0.zero();
  for (DeviceBuffer& d : s_.danchor) d.zero();
  if (s_.dx0.size()) s_.dx0.zero();
  // The gradients are final from the top of the buffer down (the layout is in forward order):
  // ln_f and an untied head, then each block, then the embedding (with a tied head).
  size_t final_from = lay_.table.total();
  auto grads_final_from = [&](size_t begin) {
    zero_stale(begin, final_from);
    if (grads_ready_) grads_ready_(begin, final_from);
    final_from = begin;
  };
  const Activations& a = acts_;
  const float* last = L == 0 ? a.stream0 : a.layers.back().residual3;
  linear_backward(dln, Dinp::overwrite, lay_.head, Param{}, a.logits, a.lnf, BT, C, Vl);
  if (tp_size_ > 1) tp_sum(dln, n);  // each rank's vocabulary slice gave part of d(ln_f output)
  be_.layernorm_backward(dres, G(lay_.lnfw), G(lay_.lnfb), dln, last, P(lay_.lnfw), a.lnf_mean, a.lnf_rstd, BT, C);
  grads_final_from(lay_.lnfw.off);
  for (int l = L - 1; l >= 0; l--) {
    const float* residual = l == 0 ? a.stream0 : a.layers[l - 1].residual3;
    // with recompute the shared activations hold the last block's: recompute every other block
    if (recompute_ && l != L - 1) block_forward(l, residual, train_pass());
    block_backward(l, residual, dres);
    if (s_.danchor[size_t(l)].size()) anchor_backward(l);  // every layer mixing with it is behind
    grads_final_from(lay_.layers[l].ln1w.off);  // a block's first tensor
  }
  if (s_.dx0.size()) be_.axpby_rows(dres, s_.dx0.data(), 1.0f, 1.0f, size_t(BT), C, size_t(C), size_t(C));
  float* demb = dres;
  if (cfg_.emb_norm) {
    be_.zero(dln, n * sizeof(float));
    be_.layernorm_backward(dln, G(lay_.lnew), G(lay_.lneb), dres, a.encoded, P(lay_.lnew), a.emb_mean, a.emb_rstd, BT,
                           C);
    demb = dln;
  }
  // demb is the same on every tensor rank: each takes its own vocabulary rows, and all the positions
  be_.encoder_backward(G(lay_.wte), G(lay_.wpe), demb, inputs_be_, B, T, C, tp_rank_ * Vl, Vl);
  grads_final_from(0);
}
