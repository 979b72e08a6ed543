#pragma once
// The small models the model-level tests share (model, tensor parallel, cuda against cpu), and
// what they feed them.
#include <cstdint>
#include <vector>

#include "trainer/config/config.h"
#include "trainer/model/model.h"
#include "common/rng.h"

namespace test_models {

// GPT-2 with a padded vocabulary: 90 of 128, so that with TP = 4 the last shard holds padding only.
inline config::ModelConfig gpt2(int max_seq_len = 32) {
  config::ModelConfig m;
  m.vocab_size = 90, m.padded_vocab_size = 128, m.n_layer = 2, m.n_head = 4, m.d_model = 32, m.max_seq_len = max_seq_len;
  return m;
}

// Every backbone option: RoPE, qk-norm, emb-norm, ReLU^2, token shift, value residual, residual
// scale, no biases, untied head; sliding window and KVM (chunks of 4, several state updates).
inline config::ModelConfig hybrid() {
  config::ModelConfig m;
  m.vocab_size = 100, m.padded_vocab_size = 128, m.n_layer = 3, m.n_head = 4, m.d_model = 32, m.max_seq_len = 64;
  m.pos = config::Pos::rope, m.rope_dims = 4, m.swa_rope_dims = 8;
  m.mlp = config::Mlp::relu2, m.qk_norm = true, m.emb_norm = true;
  m.tie_embeddings = false, m.bias = false, m.token_shift = true, m.value_residual = true, m.residual_scale = 0.5;
  m.mixers = {config::Mixer::swa, config::Mixer::kvm}, m.swa_window = 6;
  m.kvm.chunk = 4, m.kvm.window_chunks = 2, m.kvm.sink = 1, m.kvm.budget = config::KvmBudget::power_law;
  m.kvm.min_len = 4, m.kvm.power_f = 2, m.kvm.power_e = 0.5;
  return m;
}

// The paper's backbone with every one of its switches (docs/paper-mapping.md): its init, RoPE,
// q/k/v and MLP shifts, rwkv value residual per mixer kind, softmax over the padded vocabulary,
// muP; with `mixers` (bswa: chunks of 4, 3 of them).
inline config::ModelConfig paper(std::vector<config::Mixer> mixers) {
  config::ModelConfig m = hybrid();
  m.mixers = std::move(mixers);
  m.n_head = 2, m.rope_dims = 8, m.swa_rope_dims = 16, m.swa_rope_base = 500, m.residual_scale = 1.0;
  m.init = config::ModelInit::paper, m.rope_variant = config::RopeVariant::paper, m.mup_base_dim = 16;
  m.token_shift = false, m.qkv_shift = true, m.mlp_shift = true, m.zero_init_out = true;
  m.value_residual = true, m.value_residual_mode = config::ValueResidualMode::rwkv;
  m.value_residual_anchor = config::ValueResidualAnchor::per_mixer;
  m.softmax_over_padding = true;
  return m;
}

// GPT-2 init plus noise everywhere (biases, norms, temperatures too), padded rows left zero; the
// model's parameters must be host memory (the cpu backend).
inline void perturb(Model& model, uint64_t seed) {
  model.init(seed);
  Rng rng(seed + 1);
  const auto& m = model.cfg();
  for (const auto& v : model.table().views()) {
    size_t rows = (v.name == "wte" || v.name == "lm_head.weight") ? size_t(m.vocab_size) * m.d_model : v.size;
    for (size_t i = 0; i < rows; i++) model.params()[v.offset + i] += float(rng.normal() * 0.05);
  }
}

// n random token ids below V; with ignore, positions 1 and n-2 are the ignore index -1.
inline std::vector<int> tokens(size_t n, int V, uint64_t seed, bool ignore = false) {
  Rng rng(seed);
  std::vector<int> t(n);
  for (auto& x : t) x = int(rng.next_u64() % V);
  if (ignore) t[1] = t[n - 2] = -1;
  return t;
}

// n floats of a buffer in be's memory, copied to the host.
inline std::vector<float> to_host(const Backend& be, const float* p, size_t n) {
  std::vector<float> h(n);
  be.to_host(h.data(), p, n * sizeof(float));
  return h;
}

}  // namespace test_models
