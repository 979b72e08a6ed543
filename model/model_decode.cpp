// Token-by-token decode of one sequence. Each layer keeps what later tokens need: attention layers
// their k (after qk-norm and RoPE) and v (after the value residual), all positions for full
// attention, a ring of swa_window positions for sliding-window layers; KVM layers their
// kernels::KvmCache (mixer_kvm.cpp); with token shift, the previous token's ln_1 and ln_2 rows.
// step() runs the same kernels as forward() on one row, so its logits equal forward()'s at that
// position up to summation order. Under tensor parallelism every rank steps its own heads and
// hidden units (the caches hold them only), with the forward's all-reduces, and the logits of the
// vocabulary slices are all-gathered so that step() returns all Vp on every rank. The one-row
// activations and the attention over the cache are host memory and host loops: cpu only.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "model/model.h"

struct Model::DecodeCache {
  struct LayerCache {
    int cap = 0;                       // positions kept (ring for swa)
    std::vector<float> kc, vc;         // (cap, Ca): this rank's heads
    std::vector<float> prev_att, prev_mlp;  // (C): the previous token's ln_1 / ln_2 rows
  };
  std::vector<LayerCache> layers;
  // one token's activations
  std::vector<float> x, enc, ln1, xa, qkv, qkvp, atty, tmp, res2, ln2, xm, fch, act, v0, lnf, logits, local_logits;
  std::vector<float> mean, rstd, hmean, hrstd;
};

void Model::DecodeCacheDeleter::operator()(DecodeCache* p) const { delete p; }

size_t Model::decode_cache_bytes() const {
  if (!dec_) return 0;
  size_t bytes = 0;
  for (int l = 0; l < int(dec_->layers.size()); l++) {
    const auto& c = dec_->layers[l];
    bytes += (c.kc.size() + c.vc.size() + c.prev_att.size() + c.prev_mlp.size()) * sizeof(float);
    bytes += kvm_cache_bytes(l);
  }
  return bytes;
}

void Model::reset_decode() {
  if (!be_.host)
    throw std::runtime_error("decode (Model::step) runs on cpu only; on cuda sample by recomputing the context");
  const int C = cfg_.d_model, NH = NHl_, Ca = Ca_;
  auto* d = new DecodeCache;
  d->layers.resize(layers_.size());
  for (size_t l = 0; l < layers_.size(); l++) {
    auto& lc = d->layers[l];
    const Layer& w = layers_[l];
    if (w.mixer != Mixer::kvm) {
      lc.cap = w.window ? std::min(w.window, cfg_.max_seq_len) : cfg_.max_seq_len;
      lc.kc.assign(size_t(lc.cap) * Ca, 0.0f);
      lc.vc.assign(size_t(lc.cap) * Ca, 0.0f);
    }
    lc.prev_att.assign(C, 0.0f);
    lc.prev_mlp.assign(C, 0.0f);
  }
  for (auto* v : {&d->x, &d->enc, &d->ln1, &d->xa, &d->tmp, &d->res2, &d->ln2, &d->xm, &d->lnf}) v->assign(C, 0.0f);
  d->atty.assign(Ca, 0.0f);
  d->v0.assign(Ca, 0.0f);
  d->qkv.assign(3 * Ca, 0.0f);
  d->qkvp.assign(3 * Ca, 0.0f);
  d->fch.assign(Fl_, 0.0f);
  d->act.assign(Fl_, 0.0f);
  d->logits.assign(cfg_.padded_vocab_size, 0.0f);
  if (tp_size_ > 1) d->local_logits.assign(Vl_, 0.0f);
  d->mean.assign(1, 0.0f);
  d->rstd.assign(1, 0.0f);
  d->hmean.assign(NH, 0.0f);
  d->hrstd.assign(NH, 0.0f);
  dec_.reset(d);
  pos_ = 0;
}

const float* Model::step(int token) {
  if (!dec_) reset_decode();
  DecodeCache& d = *dec_;
  const int C = cfg_.d_model, NH = NHl_, hs = C / cfg_.n_head, Ca = Ca_, F = Fl_, Vl = Vl_, pos = pos_;
  const float s = float(cfg_.residual_scale), base = float(cfg_.rope_base);
  if (wpe_ != kNone && pos >= cfg_.max_seq_len) throw std::runtime_error("decode: past model.max_seq_len");

  // embedding: wte[token] (+ wpe[pos]) (+ LayerNorm)
  if (tp_size_ == 1) {
    const float* te = P(wte_) + size_t(token) * C;
    for (int c = 0; c < C; c++) d.enc[c] = te[c] + (wpe_ != kNone ? P(wpe_)[size_t(pos) * C + c] : 0.0f);
  } else {  // the owner's row, summed over the vocabulary shards
    const int row = token - tp_rank_ * Vl;
    if (row >= 0 && row < Vl) std::memcpy(d.enc.data(), P(wte_) + size_t(row) * C, C * sizeof(float));
    else std::fill(d.enc.begin(), d.enc.end(), 0.0f);
    tp_sum(d.enc.data(), size_t(C));
    if (wpe_ != kNone)
      for (int c = 0; c < C; c++) d.enc[c] += P(wpe_)[size_t(pos) * C + c];
  }
  if (cfg_.emb_norm)
    be_.layernorm_forward(d.x.data(), d.mean.data(), d.rstd.data(), d.enc.data(), P(lnew_), P(lneb_), 1, C);
  else d.x = d.enc;

  for (int l = 0; l < int(layers_.size()); l++) {
    const Layer& w = layers_[l];
    auto& lc = d.layers[l];
    // ---- attention sub-block ----
    be_.layernorm_forward(d.ln1.data(), d.mean.data(), d.rstd.data(), d.x.data(), P(w.ln1w), P(w.ln1b), 1, C);
    const float* xa = d.ln1.data();
    if (cfg_.token_shift) {
      be_.token_shift_forward(d.xa.data(), d.ln1.data(), lc.prev_att.data(), P(w.shift_att), 1, 1, C);
      lc.prev_att = d.ln1;
      xa = d.xa.data();
    }
    linear_forward(d.qkv.data(), xa, w.qkvw, w.qkvb, 1, C, 3 * Ca);
    if (cfg_.value_residual && l == 0) std::memcpy(d.v0.data(), d.qkv.data() + 2 * Ca, Ca * sizeof(float));
    d.qkvp = d.qkv;
    float* qkvp = d.qkvp.data();
    if (cfg_.value_residual && l > 0)
      for (int c = 0; c < Ca; c++) qkvp[2 * Ca + c] = 0.5f * (qkvp[2 * Ca + c] + d.v0[c]);
    if (cfg_.qk_norm) {
      be_.head_layernorm_forward(qkvp, d.hmean.data(), d.hrstd.data(), d.qkv.data(), P(w.qnw), P(w.qnb), 1, NH, hs,
                                 3 * Ca);
      be_.head_layernorm_forward(qkvp + Ca, d.hmean.data(), d.hrstd.data(), d.qkv.data() + Ca, P(w.knw), P(w.knb), 1,
                                 NH, hs, 3 * Ca);
    }
    if (w.rope_dims) {
      be_.rope_forward(qkvp, qkvp, 1, 1, NH, hs, 3 * Ca, w.rope_dims, base, pos);
      be_.rope_forward(qkvp + Ca, qkvp + Ca, 1, 1, NH, hs, 3 * Ca, w.rope_dims, base, pos);
    }
    if (w.mixer == Mixer::kvm) {
      kvm_decode(l, d.atty.data(), qkvp, d.ln1.data());
    } else {
      if (!w.window && pos >= lc.cap) throw std::runtime_error("decode: past model.max_seq_len");
      const int slot = pos % lc.cap;
      std::memcpy(lc.kc.data() + size_t(slot) * Ca, qkvp + Ca, Ca * sizeof(float));
      std::memcpy(lc.vc.data() + size_t(slot) * Ca, qkvp + 2 * Ca, Ca * sizeof(float));
      const int first = w.window ? std::max(0, pos - w.window + 1) : 0;
      const float scale = 1.0f / std::sqrt(float(hs));
      std::vector<float> p(size_t(pos - first + 1));
      for (int h = 0; h < NH; h++) {
        const float* q = qkvp + h * hs;
        float mx = -INFINITY;
        for (int j = first; j <= pos; j++) {
          const float* kj = lc.kc.data() + size_t(j % lc.cap) * Ca + h * hs;
          float dot = 0.0f;
          for (int e = 0; e < hs; e++) dot += q[e] * kj[e];
          p[j - first] = dot * scale;
          mx = std::max(mx, p[j - first]);
        }
        float sum = 0.0f;
        for (auto& v : p) sum += (v = std::exp(v - mx));
        float* o = d.atty.data() + h * hs;
        std::fill(o, o + hs, 0.0f);
        for (int j = first; j <= pos; j++) {
          const float* vj = lc.vc.data() + size_t(j % lc.cap) * Ca + h * hs;
          const float pj = p[j - first] / sum;
          for (int e = 0; e < hs; e++) o[e] += pj * vj[e];
        }
      }
    }
    row_parallel_forward(d.tmp.data(), d.atty.data(), w.projw, w.projb, 1, Ca);
    be_.scaled_residual_forward(d.res2.data(), d.x.data(), d.tmp.data(), s, C);
    // ---- MLP sub-block ----
    be_.layernorm_forward(d.ln2.data(), d.mean.data(), d.rstd.data(), d.res2.data(), P(w.ln2w), P(w.ln2b), 1, C);
    const float* xm = d.ln2.data();
    if (cfg_.token_shift) {
      be_.token_shift_forward(d.xm.data(), d.ln2.data(), lc.prev_mlp.data(), P(w.shift_mlp), 1, 1, C);
      lc.prev_mlp = d.ln2;
      xm = d.xm.data();
    }
    linear_forward(d.fch.data(), xm, w.fcw, w.fcb, 1, C, F);
    switch (cfg_.mlp) {
      case config::Mlp::gelu: be_.gelu_forward(d.act.data(), d.fch.data(), F); break;
      case config::Mlp::relu2: be_.relu2_forward(d.act.data(), d.fch.data(), F); break;
    }
    row_parallel_forward(d.tmp.data(), d.act.data(), w.fcprojw, w.fcprojb, 1, F);
    be_.scaled_residual_forward(d.x.data(), d.res2.data(), d.tmp.data(), s, C);
  }
  be_.layernorm_forward(d.lnf.data(), d.mean.data(), d.rstd.data(), d.x.data(), P(lnfw_), P(lnfb_), 1, C);
  if (tp_size_ == 1) {
    linear_forward(d.logits.data(), d.lnf.data(), head_, kNone, 1, C, Vl);
  } else {
    linear_forward(d.local_logits.data(), d.lnf.data(), head_, kNone, 1, C, Vl);
    tp_->all_gather(d.local_logits.data(), d.logits.data(), size_t(Vl));
  }
  pos_++;
  return d.logits.data();
}
