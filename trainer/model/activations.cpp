#include "trainer/model/activations.h"

namespace {

// Places named pointers in one allocation: each request is noted, then bind() points them all
// into the buffer once its size is known. Every tensor starts on a 64-byte boundary.
class Arena {
 public:
  void operator()(float*& p, size_t n) {
    slots_.push_back({&p, total_});
    total_ += (n + 15) / 16 * 16;
  }
  size_t total() const { return total_; }
  void bind(float* base) const {
    for (const auto& [p, off] : slots_) *p = base + off;
  }

 private:
  std::vector<std::pair<float**, size_t>> slots_;
  size_t total_ = 0;
};

// One block's activations for BT tokens: a block with `mixer`, whose q/k/v are `processed`, that
// mixes its values with an anchor when `vres`.
void plan_block(Arena& alloc, LayerActs& a, const config::ModelConfig& cfg, Mixer mixer, bool processed, bool vres,
                size_t BT, int tp_size) {
  const size_t C = size_t(cfg.d_model), Ca = C / tp_size, NHl = size_t(cfg.n_head / tp_size), F = 4 * C / tp_size;
  const size_t Ckv = size_t(kv_heads(cfg) / tp_size) * (C / cfg.n_head), W = Ca + 2 * Ckv;
  const bool gqa = Ckv != Ca;
  alloc(a.ln1, BT * C);
  alloc(a.ln1_mean, BT);
  alloc(a.ln1_rstd, BT);
  if (cfg.token_shift) alloc(a.xa, BT * C);
  alloc(a.qkv, BT * W);
  if (vres && cfg.value_residual_mode == config::ValueResidualMode::rwkv) {
    alloc(a.vr_h, BT * size_t(value_gate_rank(cfg.d_model)));
    alloc(a.vr_z, BT * Ckv);
  }
  if (vres && cfg.qkv_shift) alloc(a.qkvr, BT * W);
  if (cfg.qkv_shift) alloc(a.qkvs, BT * W);
  if (processed) alloc(a.qkvp, BT * W);
  if (gqa) alloc(a.qkvx, BT * 3 * Ca);
  if (cfg.qk_norm) {
    alloc(a.qn_mean, BT * NHl);
    alloc(a.qn_rstd, BT * NHl);
    alloc(a.kn_mean, BT * NHl);
    alloc(a.kn_rstd, BT * NHl);
  }
  alloc(a.atty, BT * Ca);
  if (mixer == Mixer::kvm) {
    alloc(a.qh, BT * Ca);
    alloc(a.kh, BT * Ca);
    alloc(a.vh, BT * Ca);
    alloc(a.gpre, BT * NHl);
    if (gqa) alloc(a.gkv, BT * size_t(kv_heads(cfg) / tp_size));
    alloc(a.g, BT * NHl);
    alloc(a.outh, BT * Ca);
  }
  alloc(a.lse, BT * NHl);
  alloc(a.residual2, BT * C);
  alloc(a.ln2, BT * C);
  alloc(a.ln2_mean, BT);
  alloc(a.ln2_rstd, BT);
  if (cfg.token_shift || cfg.mlp_shift) alloc(a.xm, BT * C);
  alloc(a.fch, BT * F);
  alloc(a.fch_act, BT * F);
  alloc(a.residual3, BT * C);
}

// The tensors that are another's when an option is off.
void alias_absent(LayerActs& a, bool processed) {
  if (!a.xa) a.xa = a.ln1;
  if (!a.xm) a.xm = a.ln2;
  if (!processed) a.qkvp = a.qkv;
  a.qkvm = a.qkvx ? a.qkvx : a.qkvp;
}

}  // namespace

Activations::Activations(const Backend& be, const config::ModelConfig& cfg, const ModelLayout& layout, int tp_size,
                         int B, int T, bool shared_blocks) {
  const size_t BT = size_t(B) * T, C = size_t(cfg.d_model);
  const size_t Ckv = size_t(kv_heads(cfg) / tp_size) * (C / cfg.n_head);  // the values' width
  const size_t Vl = size_t(cfg.padded_vocab_size / tp_size);
  const int L = int(layout.layers.size());
  Arena alloc;
  alloc(encoded, BT * C);
  if (cfg.emb_norm) {
    alloc(emb_mean, BT);
    alloc(emb_rstd, BT);
    alloc(stream0, BT * C);
  }
  if (cfg.value_residual) alloc(v0, BT * Ckv);
  anchors.resize(size_t(L));
  for (int l = 0; l < L; l++) {
    const int f = layout.layers[l].anchor;
    if (f <= 0 || anchors[f].v) continue;
    Anchor& an = anchors[f];
    alloc(an.ln, BT * C);
    alloc(an.mean, BT);
    alloc(an.rstd, BT);
    alloc(an.v, BT * Ckv);
  }
  layers.resize(size_t(L));
  LayerActs shared;
  std::vector<float*> outputs(static_cast<size_t>(L));  // shared_blocks: each block's own residual3
  if (shared_blocks && L > 0) {
    // the shared set must hold the largest block: a KVM one if any layer is KVM, with q/k/v
    // processing and a value residual if any layer has them
    bool kvm = false, processed = false, vres = false;
    for (int l = 0; l < L; l++) {
      kvm = kvm || layout.layers[l].mixer == Mixer::kvm;
      processed = processed || qkv_processed(cfg, l);
      vres = vres || layout.layers[l].anchor >= 0;
    }
    plan_block(alloc, shared, cfg, kvm ? Mixer::kvm : Mixer::attn, processed, vres, BT, tp_size);
    for (int l = 0; l < L; l++) alloc(outputs[l], BT * C);
  } else {
    for (int l = 0; l < L; l++)
      plan_block(alloc, layers[l], cfg, layout.layers[l].mixer, qkv_processed(cfg, l), layout.layers[l].anchor >= 0, BT,
                 tp_size);
  }
  alloc(lnf, BT * C);
  alloc(lnf_mean, BT);
  alloc(lnf_rstd, BT);
  alloc(logits, BT * Vl);
  alloc(losses, BT);

  buf = DeviceBuffer(be, alloc.total());
  alloc.bind(buf.data());
  if (!stream0) stream0 = encoded;
  for (int l = 0; l < L; l++) {
    if (shared_blocks) {
      layers[l] = shared;
      layers[l].residual3 = outputs[l];
    }
    alias_absent(layers[l], qkv_processed(cfg, l));
  }
}
