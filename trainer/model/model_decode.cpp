// Token-by-token decode of one sequence: the training pass's own blocks (block.cpp) on one token
// at a time, over per-layer caches (decode_cache.h). Attention layers keep their k (after
// qk-norm and RoPE) and v (after the value residual): all positions for full attention, a ring
// of swa_window positions for sliding-window layers; KVM layers their kernels::KvmCache
// (mixer_kvm.cpp); with token shift, the previous token's ln_1 and ln_2 rows. So step()'s logits
// equal forward()'s at that position up to summation order. Under tensor parallelism every rank
// steps its own heads and hidden units (the caches hold them only), with the forward's
// all-reduces, and the vocabulary slices' logits are all-gathered so that step() returns all Vp
// on every rank.
#include <algorithm>
#include <stdexcept>

#include "trainer/model/decode_cache.h"

void Model::DecodeCacheDeleter::operator()(DecodeCache* p) const { delete p; }

size_t Model::decode_cache_bytes() const {
  if (!dec_) return 0;
  size_t bytes = 0;
  for (int l = 0; l < int(dec_->layers.size()); l++) {
    const auto& c = dec_->layers[l];
    bytes += c.k.bytes() + c.v.bytes() + c.prev_att.bytes() + c.prev_mlp.bytes() + c.prev_qkv.bytes();
    bytes += kvm_cache_bytes(l);
  }
  return bytes;
}

void Model::reset_decode() {
  const int C = cfg_.d_model;
  auto* d = new DecodeCache;
  d->layers.resize(lay_.layers.size());
  for (size_t l = 0; l < lay_.layers.size(); l++) {
    DecodeCache::Layer& c = d->layers[l];
    const LayerParams& w = lay_.layers[l];
    switch (w.mixer) {
      case Mixer::attn:
      case Mixer::swa:
      case Mixer::bswa:
        c.cap = w.window ? std::min(w.window, cfg_.max_seq_len) : cfg_.max_seq_len;
        c.k = DeviceBuffer(be_, size_t(c.cap) * Ca_);
        c.v = DeviceBuffer(be_, size_t(c.cap) * Ca_);
        break;
      case Mixer::kvm:  // its kernels::KvmCache, made at position 0 (mixer_kvm.cpp)
        break;
    }
    if (cfg_.token_shift) c.prev_att = DeviceBuffer(be_, size_t(C));
    if (w.shift_mlp) c.prev_mlp = DeviceBuffer(be_, size_t(C));
    if (cfg_.qkv_shift) c.prev_qkv = DeviceBuffer(be_, size_t(W_));
  }
  d->acts = Activations(be_, cfg_, lay_, tp_size_, 1, 1, true);
  if (tp_size_ > 1) d->full_logits = DeviceBuffer(be_, size_t(cfg_.padded_vocab_size));
  d->logits.resize(size_t(cfg_.padded_vocab_size));
  dec_.reset(d);
  pos_ = 0;
}

const float* Model::step(int token) {
  if (!dec_) reset_decode();
  DecodeCache& d = *dec_;
  const int pos = pos_;
  if (pos >= cfg_.max_seq_len && (lay_.wpe || std::any_of(lay_.layers.begin(), lay_.layers.end(), [](const LayerParams& y) {
                                     return y.mixer == Mixer::attn;
                                   })))
    throw std::runtime_error("decode: past model.max_seq_len");
  const Pass p{1, 1, pos, d.acts, &d};
  embed(p, tokens_for_backend(&token, 0, 1));
  anchors_forward(p);
  const float* residual = d.acts.stream0;
  for (int l = 0; l < int(lay_.layers.size()); l++) {
    block_forward(l, residual, p);
    residual = d.acts.layers[l].residual3;
  }
  head(p, residual);
  const float* logits = d.acts.logits;
  if (tp_size_ > 1) {
    tpd_->all_gather(d.acts.logits, d.full_logits.data(), size_t(Vl_));
    logits = d.full_logits.data();
  }
  pos_++;
  if (be_.host) return logits;
  be_.to_host(d.logits.data(), logits, d.logits.size() * sizeof(float));
  return d.logits.data();
}
