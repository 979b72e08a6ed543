#pragma once
// The GPT-2 model (llm.c's layout): token + learned position embedding, pre-LayerNorm blocks of
// causal self-attention and a GELU MLP, a final LayerNorm and a (tied or untied) head over the
// padded vocabulary. Parameters, gradients and activations are named views over single
// allocations; forward and backward are the sequence of kernel calls, top to bottom.
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/aligned_buffer.h"
#include "trainer/config.h"
#include "trainer/tensor_table.h"

class Model {
 public:
  // Activations are sized for batches of up to B sequences of up to T tokens.
  Model(const config::ModelConfig& cfg, int B, int T);

  // GPT-2 initialisation: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), biases 0,
  // LayerNorm weights 1; the padded vocabulary rows stay 0.
  void init(uint64_t seed);

  // Logits (B, T, Vp) of `inputs` (B, T); B <= max B, T <= max T.
  void forward(const int* inputs, int B, int T);
  // Mean cross-entropy of the last forward against `targets` (B, T) (ignore index -1). With
  // dloss != 0 the logits are overwritten by d(dloss * sum of losses)/dlogits, ready for backward.
  float loss(const int* targets, float dloss);
  // Accumulates parameter gradients of the last forward (after loss with dloss != 0).
  void backward();
  void zero_grad() { grads_.zero(); }

  const float* logits() const { return acts_.data() + logits_off_; }  // (B, T, Vp)
  float* params() { return params_.data(); }
  float* grads() { return grads_.data(); }
  const TensorTable& table() const { return table_; }
  size_t num_params() const;         // real parameters, padding between views excluded
  size_t activation_bytes() const { return acts_.bytes(); }
  const config::ModelConfig& cfg() const { return cfg_; }
  // Forward FLOPs per token for a sequence of length T (2 per multiply-add): matmuls and attention.
  double flops_per_token(int T) const;

 private:
  struct Layer {  // offsets into the parameter (and gradient) allocation
    size_t ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb;
  };
  struct LayerActs {  // offsets into the activation allocation, sized for (maxB, maxT)
    size_t ln1, ln1_mean, ln1_rstd, qkv, atty, att_lse, residual2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu,
        residual3;
  };

  config::ModelConfig cfg_;
  int maxB_, maxT_;
  int B_ = 0, T_ = 0;
  const int* inputs_ = nullptr;  // of the last forward, for the embedding backward
  TensorTable table_;
  std::vector<Layer> layers_;
  size_t wte_, wpe_, lnfw_, lnfb_, head_;
  AlignedBuffer params_, grads_;

  std::vector<LayerActs> lacts_;
  size_t encoded_, lnf_, lnf_mean_, lnf_rstd_, logits_off_, losses_;
  AlignedBuffer acts_;
  // backward scratch, one block's worth, reused layer by layer
  AlignedBuffer dres_, dln_, dqkv_, datty_, dfch_, dfch_gelu_;
};
