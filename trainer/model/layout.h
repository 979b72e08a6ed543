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

// How a tensor starts (Model::init).
enum class Init {
  zeros,           // biases
  ones,            // LayerNorm weights, KVM temperatures
  normal,          // N(0, 0.02): product weights, learned positions
  normal_vocab,    // N(0, 0.02) in the real vocabulary's rows; the padded rows stay 0 (no token selects them)
  normal_out,      // output projections: N(0, 0.02/sqrt(2L)) as GPT-2, or 0 with model.zero_init_out
  token_shift,     // RWKV-4's time_mix: channel c of layer l mixes (c/C)^(1 - l/L) of the current token
  fan_in_uniform,  // PyTorch Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = d_model
};

// How tensor parallelism splits a tensor over the TP ranks (docs/distributed.md).
enum class Shard {
  none,      // replicated
  rows,      // dimension 0 (column-parallel weights, vocabulary rows, per-head entries)
  cols,      // dimension 1 (row-parallel weights)
  qkv_rows,  // dimension 0 in three blocks (q | k | v): each rank holds its heads of each
};

struct LayerParams {
  Mixer mixer = Mixer::attn;
  int rope_dims = 0;  // 0: no RoPE on this layer
  int window = 0;     // attention window in tokens, 0 for full attention
  Param ln1w, ln1b, shift_att, qkvw, qkvb, qnw, qnb, knw, knb, projw, projb;  // attention sub-block
  Param lnsw, lnsb, gatew, tau_front, tau_state;                              // KVM
  Param ln2w, ln2b, shift_mlp, fcw, fcb, fcprojw, fcprojb;                    // MLP sub-block
};

struct ModelLayout {
  TensorTable table;
  struct Rule {
    Init init;
    int layer;  // token_shift's l
  };
  std::vector<Rule> init;  // per view of table, in its order
  Param wte, wpe, lnew, lneb, lnfw, lnfb, head;  // head is wte when tied
  std::vector<LayerParams> layers;
};

// Whether layer l's q/k/v pass through qk-LayerNorm, RoPE or the value residual (else the
// projection's rows are the mixer's input as they are).
inline bool qkv_processed(const config::ModelConfig& cfg, int l) {
  return cfg.qk_norm || cfg.pos == config::Pos::rope || (cfg.value_residual && l > 0);
}

// This rank's layout: tensors in the order of the forward pass, sharded tensors holding rank
// tp_rank's part of tp_size. Throws std::invalid_argument naming the key when n_head,
// padded_vocab_size or 4*d_model is not divisible by tp_size.
ModelLayout declare_layout(const config::ModelConfig& cfg, int tp_size, int tp_rank);

// Writes every tensor of the layout into p (the host's parameter allocation, table.total()) by
// its rule. Sharded tensors are drawn whole, as with TP = 1, and this rank's shard kept, so that
// the model is the TP = 1 model for the same seed.
void init_params(float* p, const ModelLayout& layout, const config::ModelConfig& cfg, uint64_t seed);
