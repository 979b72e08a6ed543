#pragma once
// The activations of one pass through the model, sized for batches of up to (B, T): named
// pointers into one allocation in the backend's memory, null where the config has no such
// tensor. The training pass keeps a set per block (or, recomputing, one shared set and each
// block's output); decode uses a shared set sized for one token.
#include <cstddef>
#include <vector>

#include "trainer/config/config.h"
#include "kernels/backend.h"
#include "trainer/model/layout.h"

// One block's activations. Ca, NHl, F: this rank's attention width, heads and MLP width; with
// grouped-query attention the q|k|v rows up to qkvp are Ca + 2*Ckv wide (3Ca widths below), v Ckv.
struct LayerActs {
  float* ln1 = nullptr;       // (B,T,C) ln_1(residual)
  float* ln1_mean = nullptr;  // (B,T)
  float* ln1_rstd = nullptr;  // (B,T)
  float* xa = nullptr;        // (B,T,C) after the token shift (ln1 without one)
  float* qkv = nullptr;       // (B,T,3Ca) the projection
  float* vr_h = nullptr;      // (B,T,rank) rwkv value gate: the LoRA's down-projection of ln1
  float* vr_z = nullptr;      // (B,T,Ca) its up-projection (the gate before its bias and sigmoid)
  float* qkvr = nullptr;      // (B,T,3Ca) with model.qkv_shift and a value residual: q, k and the mixed v
  float* qkvs = nullptr;      // (B,T,3Ca) after model.qkv_shift
  float* qkvp = nullptr;      // (B,T,3Ca) after value residual, shift, qk-norm and RoPE (qkv when none applies)
  float* qkvx = nullptr;      // GQA: (B,T,3Ca) qkvp with each key/value head repeated for its query heads
  float* qkvm = nullptr;      // the mixer's input: qkvx with GQA, else qkvp
  float* gkv = nullptr;       // GQA, KVM: (B,T,NKVl) the gate's projection, per key/value head
  float* qn_mean = nullptr;   // (B,T,NHl) qk-norm statistics
  float* qn_rstd = nullptr;
  float* kn_mean = nullptr;
  float* kn_rstd = nullptr;
  float* atty = nullptr;      // (B,T,Ca) the mixer's output
  float* lse = nullptr;       // (B,NHl,T) attention's row logsumexp
  float* qh = nullptr;        // KVM: (B,NHl,T,D) q, k, v per head
  float* kh = nullptr;
  float* vh = nullptr;
  float* gpre = nullptr;      // KVM: (B,T,NHl) the gate before 1+elu, then (B,NHl,T) after
  float* g = nullptr;
  float* outh = nullptr;      // KVM: (B,NHl,T,D)
  float* residual2 = nullptr; // (B,T,C) after the attention sub-block
  float* ln2 = nullptr;       // (B,T,C) ln_2(residual2)
  float* ln2_mean = nullptr;
  float* ln2_rstd = nullptr;
  float* xm = nullptr;        // (B,T,C) after the token shift (ln2 without one)
  float* fch = nullptr;       // (B,T,F) fc output
  float* fch_act = nullptr;   // (B,T,F) after GELU / ReLU^2
  float* residual3 = nullptr; // (B,T,C) the block's output
};

struct Activations {
  Activations() = default;
  // shared_blocks: one set for every block but each its own residual3 (recompute; decode).
  Activations(const Backend& be, const config::ModelConfig& cfg, const ModelLayout& layout, int tp_size, int B, int T,
              bool shared_blocks);
  size_t bytes() const { return buf.bytes(); }

  DeviceBuffer buf;
  float* encoded = nullptr;   // (B,T,C) token (+ position) embedding
  float* emb_mean = nullptr;  // (B,T) with model.emb_norm
  float* emb_rstd = nullptr;
  float* stream0 = nullptr;   // (B,T,C) the residual stream entering block 0 (encoded without emb_norm)
  float* v0 = nullptr;        // (B,T,Ca) layer 0's values, with model.value_residual
  // value_residual_anchor per_mixer: the anchor of the mixer whose first layer is f > 0, that
  // layer's ln_1 of stream0 and its value projection of it (docs/paper-mapping.md)
  struct Anchor {
    float* ln = nullptr;  // (B,T,C)
    float* mean = nullptr;
    float* rstd = nullptr;
    float* v = nullptr;  // (B,T,Ca)
  };
  std::vector<Anchor> anchors;  // per layer f; null pointers where f is no anchor's first layer
  // The values layer l mixes with (its LayerParams::anchor's)
  const float* anchor_of(int f) const { return f == 0 ? v0 : anchors[size_t(f)].v; }
  std::vector<LayerActs> layers;
  float* lnf = nullptr;       // (B,T,C)
  float* lnf_mean = nullptr;
  float* lnf_rstd = nullptr;
  float* logits = nullptr;    // (B,T,Vl)
  float* losses = nullptr;    // (B,T)
};
