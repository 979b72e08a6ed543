#pragma once
// What test_gpt2_parity and test_backbone_parity share: a small model with perturbed parameters
// and a fixed random batch, handed to a PyTorch reference script (tests/reference/*_ref.py, which
// read them through parity_io.py), and the comparison of kvmtrain's logits, loss, every parameter
// gradient and the losses of 10 AdamW steps against the script's result. The tolerances are the
// ones both tests state in their headers.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "common/json.h"
#include "tests/test_util.h"
#include "trainer/config/config.h"
#include "trainer/model/model.h"
#include "trainer/optim/optimizer.h"
#include "common/rng.h"

namespace parity {

namespace fs = std::filesystem;

struct Batch {
  std::vector<int32_t> tokens;  // (B, T+1)
  std::vector<uint8_t> mask;    // (B, T+1) loss mask (data/shard.h); empty: every target is scored
  std::vector<int> x, y;        // (B, T) inputs and next-token targets (-1: not scored)
  int scored() const { return int(std::count_if(y.begin(), y.end(), [](int t) { return t != -1; })); }
};

// Adds N(0, 0.05) to every parameter (biases, LayerNorms and zero-initialised projections too, the
// padded vocabulary rows excepted) so that no gradient path is trivially zero, then draws the batch.
inline Batch perturb_and_draw(Model& model, const config::ModelConfig& m, int B, int T, Rng& rng) {
  for (const auto& v : model.table().views()) {
    size_t rows = (v.name == "wte" || v.name == "lm_head.weight") ? size_t(m.vocab_size) * m.d_model : v.size;
    for (size_t i = 0; i < rows; i++) model.params()[v.offset + i] += float(rng.normal() * 0.05);
  }
  Batch batch;
  batch.tokens.resize(size_t(B) * (T + 1));
  batch.x.resize(size_t(B) * T), batch.y.resize(size_t(B) * T);
  for (auto& t : batch.tokens) t = int32_t(rng.next_u64() % m.vocab_size);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      batch.x[b * T + t] = batch.tokens[b * (T + 1) + t], batch.y[b * T + t] = batch.tokens[b * (T + 1) + t + 1];
  return batch;
}

// config.json's fields every reference reads; a test adds its model's options.
inline json::Object config_json(const config::ModelConfig& m, const config::TrainConfig& tc, int B, int T) {
  return json::Object{{"vocab_size", m.vocab_size}, {"padded_vocab_size", m.padded_vocab_size}, {"n_layer", m.n_layer},
                      {"n_head", m.n_head}, {"d_model", m.d_model}, {"max_seq_len", m.max_seq_len},
                      {"tie_embeddings", m.tie_embeddings}, {"B", B}, {"T", T}, {"lr", tc.lr}, {"min_lr", tc.min_lr},
                      {"warmup_steps", tc.warmup_steps}, {"steps", tc.steps}, {"weight_decay", tc.weight_decay},
                      {"beta1", tc.beta1}, {"beta2", tc.beta2}, {"eps", tc.eps}, {"grad_clip", tc.grad_clip}};
}

// A fresh directory under the system's temporary one, named for the test case and this process.
inline fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Writes layout.json, config.json, params.bin and tokens.bin into dir, runs the reference script
// (one thread) on it, and reads the result.json it writes. Call under ASSERT_NO_FATAL_FAILURE.
inline void run_reference(const fs::path& dir, const std::string& script, Model& model, const json::Object& cfg,
                          const Batch& batch, json::Value& result) {
  json::Array layout;
  for (const auto& v : model.table().views()) {
    json::Array shape;
    for (int d : v.shape) shape.push_back(d);
    layout.push_back(json::Object{{"name", v.name}, {"shape", shape}, {"offset", uint64_t(v.offset)}});
  }
  std::ofstream(dir / "layout.json") << json::dump(layout);
  std::ofstream(dir / "config.json") << json::dump(cfg);
  test_util::write_raw(dir / "params.bin", model.params(), model.table().total());
  test_util::write_raw(dir / "tokens.bin", batch.tokens.data(), batch.tokens.size());
  if (!batch.mask.empty()) test_util::write_raw(dir / "mask.bin", batch.mask.data(), batch.mask.size());

  std::string python = std::getenv("KVMTRAIN_PYTHON") ? std::getenv("KVMTRAIN_PYTHON") : "/usr/bin/python3";
  std::string cmd =
      "OMP_NUM_THREADS=1 " + python + " " + std::string(KVMTRAIN_SOURCE_DIR) + "/" + script + " " + dir.string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "the PyTorch reference failed: " << cmd;
  result = json::parse(std::string(std::istreambuf_iterator<char>(std::ifstream(dir / "result.json").rdbuf()), {}));
}

// The forward's logits and loss, every parameter gradient, and the losses of tc.steps AdamW steps
// on the same batch, against the reference's logits.bin, grads.bin and result's "losses". note is
// appended to every failure (the backbone test's word on KVM routing). unused(name): a tensor the
// model legitimately gives no gradient (the paper's value gate of layer 0, KVM temperatures with
// head_temps off): both sides must then give exactly 0; every other reference gradient must be nonzero.
// logits_rel > 0: the logits within logits_rel of the reference's largest, else within 2e-5.
inline void expect_matches_reference(Model& model, const config::Config& cfg, const Batch& batch, int B, int T,
                                     const fs::path& dir, const json::Value& result, const std::string& note = "",
                                     const std::function<bool(const std::string&)>& unused = {},
                                     float logits_rel = 0.0f) {
  const config::ModelConfig& m = cfg.model;
  const config::TrainConfig& tc = cfg.train;
  model.zero_grad();
  model.forward(batch.x.data(), B, T);
  const size_t NL = size_t(B) * T * m.padded_vocab_size;
  auto ref_logits = test_util::read_raw(dir / "logits.bin", NL);
  float max_logit_diff = 0, max_logit = 0;
  for (size_t i = 0; i < NL; i++) {
    max_logit_diff = std::max(max_logit_diff, std::fabs(model.logits()[i] - ref_logits[i]));
    max_logit = std::max(max_logit, std::fabs(ref_logits[i]));
  }
  EXPECT_LE(max_logit_diff, logits_rel > 0 ? logits_rel * max_logit : 2e-5f) << "max |logit| " << max_logit << note;

  const float dloss = 1.0f / float(batch.scored());  // the mean over the scored targets
  const float loss = model.loss(batch.y.data(), dloss);
  model.backward();
  const auto& ref_losses = result.at("losses").array();
  EXPECT_NEAR(loss, ref_losses[0].number(), 1e-5) << note;
  EXPECT_EQ(ref_losses.size(), size_t(tc.steps));

  const size_t P = model.table().total();
  auto ref_grads = test_util::read_raw(dir / "grads.bin", P);
  for (const auto& v : model.table().views()) {
    float max_ref = 0, max_diff = 0;
    for (size_t i = 0; i < v.size; i++) {
      max_ref = std::max(max_ref, std::fabs(ref_grads[v.offset + i]));
      max_diff = std::max(max_diff, std::fabs(model.grads()[v.offset + i] - ref_grads[v.offset + i]));
    }
    if (unused && unused(v.name)) {
      EXPECT_EQ(max_ref, 0.0f) << v.name << ": expected unused, but the reference gives it a gradient";
      EXPECT_EQ(max_diff, 0.0f) << v.name << ": expected unused, but kvmtrain gives it a gradient";
      continue;
    }
    EXPECT_GT(max_ref, 0.0f) << v.name << ": the reference gradient is zero, the test would prove nothing";
    EXPECT_LE(max_diff, 1e-4f * max_ref + 1e-7f) << v.name << " (max |g_ref| " << max_ref << ")" << note;
  }

  AdamW opt(model.table(), tc);
  for (int step = 0; step < tc.steps; step++) {
    model.zero_grad();
    model.forward(batch.x.data(), B, T);
    float l = model.loss(batch.y.data(), dloss);
    model.backward();
    EXPECT_NEAR(l, ref_losses[step].number(), 1e-4) << "step " << step << note;
    float norm = std::sqrt(norm_squared(cpu_backend(), model.grads(), P));
    opt.step(model.params(), model.grads(), lr_at(tc, step), clip_scale(norm, float(tc.grad_clip)));
  }
}

}  // namespace parity
