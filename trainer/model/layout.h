#pragma once
// The model's parameters, declared once (layout.cpp): every tensor with its name, shape, how
// tensor parallelism shards it, whether AdamW decays it and how it starts. The table of views is
// the parameter (and gradient, and moment) allocation's index; Param handles are what the model's
// code holds, absent (false) for a tensor this config does not have.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/tensor_table.h"
#include "trainer/config/config.h"

// A tensor of the layout: its offset in the parameter allocation, or absent.
struct Param {
  static constexpr size_t kAbsent = SIZE_MAX;
  size_t off = kAbsent;
  explicit operator bool() const { return off != kAbsent; }
};

using Mixer = config::Mixer;

// How a tensor starts (init_params). The paper's rules are those of its code (docs/paper-mapping.md).
enum class Init {
  zeros,            // biases; output projections and the value gate's down-projection under model.init paper
  ones,             // LayerNorm weights, KVM temperatures
  constant,         // Rule::value (the linear value residual's lambda, 1/2)
  normal,           // N(0, 0.02): product weights, learned positions
  normal_vocab,     // N(0, 0.02) in the real vocabulary's rows; the padded rows stay 0 (no token selects them)
  normal_out,       // output projections: N(0, 0.02/sqrt(2L)) as GPT-2, or 0 with model.zero_init_out
  uniform_vocab,    // the paper's embedding: U(-1e-4, 1e-4), every row of the padded vocabulary
  orthogonal,       // orthonormal rows or columns (the shorter side) times Rule::value
  token_shift,      // RWKV-4's time_mix: channel c of layer l mixes (c/C)^(1 - l/L) of the current token
  qkv_shift,        // the paper's q|k|v shift weights: 1 - (c/d)^(a*(1 - l/L)), a = 0.2 for q, 0.7 for k and v
  mlp_shift,        // the paper's MLP shift weight: 1 - (c/C)^((1 - l/L)^4)
  value_gate_bias,  // the paper's rwkv value gate bias: 0.73 - 0.4*(c/(d-1) - 1/2)
  fan_in_uniform,   // PyTorch Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = d_model
};

// How tensor parallelism splits a tensor over the TP ranks (docs/distributed.md).
enum class Shard {
  none,      // replicated
  rows,      // dimension 0 (column-parallel weights, vocabulary rows, per-head entries)
  cols,      // dimension 1 (row-parallel weights)
  qkv_rows,  // dimension 0 in three blocks (q | k | v): each rank holds its heads of each (no GQA under TP)
};

struct LayerParams {
  Mixer mixer = Mixer::attn;
  int rope_dims = 0;       // 0: no RoPE on this layer
  float rope_base = 0;
  int window = 0;          // attention window in tokens, 0 for full attention
  int block = 0;           // bswa: the window is whole chunks of this many tokens (kernels.h), else 0
  int anchor = -1;         // value residual: the layer whose value anchor this one mixes with; -1: none
  Param ln1w, ln1b, shift_att, qkvw, qkvb, shift_qkv, qnw, qnb, knw, knb, projw, projb;  // attention sub-block
  Param vr_lambda, vr_bias, vr_down, vr_up;  // value residual: linear's lambda, rwkv's gate (bias, LoRA)
  Param lnsw, lnsb, gatew, tau_front, tau_state;  // KVM
  Param ln2w, ln2b, shift_mlp, fcw, fcb, fcprojw, fcprojb;  // MLP sub-block
};

struct ModelLayout {
  TensorTable table;
  struct Rule {
    Init init;
    int layer;    // the shift rules' l
    float value;  // constant's value, orthogonal's gain
  };
  std::vector<Rule> init;  // per view of table, in its order
  Param wte, wpe, lnew, lneb, lnfw, lnfb, head;  // head is wte when tied
  std::vector<LayerParams> layers;
};

// Key/value heads (grouped-query attention): model.n_kv_head, or n_head.
inline int kv_heads(const config::ModelConfig& cfg) { return cfg.n_kv_head ? cfg.n_kv_head : cfg.n_head; }

// Whether layer l mixes its values with an anchor (layer 0's anchor is its own values: a no-op).
inline bool value_residual_applies(const config::ModelConfig& cfg, int l) { return cfg.value_residual && l > 0; }

// Whether layer l's q/k/v pass through the value residual, the paper's shift, qk-LayerNorm or
// RoPE (else the projection's rows are the mixer's input as they are).
inline bool qkv_processed(const config::ModelConfig& cfg, int l) {
  return cfg.qk_norm || cfg.pos != config::Pos::learned || cfg.qkv_shift || value_residual_applies(cfg, l);
}

// The first layer with layer l's mixer: the value anchor's layer under value_residual_anchor per_mixer.
int first_layer_of_mixer(const config::ModelConfig& cfg, int l);

// The width of the rwkv value gate's LoRA for a model width d: max(32, round(1.3*sqrt(d)/32)*32).
int value_gate_rank(int d);

// This rank's layout: tensors in the order of the forward pass, sharded tensors holding rank
// tp_rank's part of tp_size. Throws std::invalid_argument naming the key when n_head,
// padded_vocab_size or 4*d_model is not divisible by tp_size.
ModelLayout declare_layout(const config::ModelConfig& cfg, int tp_size, int tp_rank);

// Writes every tensor of the layout into p (the host's parameter allocation, table.total()) by
// its rule. Sharded tensors are drawn whole, as with TP = 1, and this rank's shard kept, so that
// the model is the TP = 1 model for the same seed.
void init_params(float* p, const ModelLayout& layout, const config::ModelConfig& cfg, uint64_t seed);
