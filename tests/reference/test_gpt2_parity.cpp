// kvmtrain's GPT-2 against an independent PyTorch model (tests/reference/gpt2_ref.py, Debian's
// torch 1.13, fp32, 1 thread): logits, loss, every parameter gradient, and the losses of 10
// AdamW steps with clipping and a warm-up/cosine schedule on a fixed batch.
//
// Tolerances (both sides fp32; llm.c accepts 1e-2 on logits/loss and 2e-2 on gradients):
//   logits: max |diff| <= 2e-5;   loss: |diff| <= 1e-5;
//   gradients: per tensor, max |diff| <= 1e-4 * max|g_ref| + 1e-7;
//   10-step losses: |diff| <= 1e-4 at every step.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "data/json.h"
#include "tests/test_util.h"
#include "trainer/model.h"
#include "trainer/optimizer.h"
#include "trainer/rng.h"

namespace fs = std::filesystem;

namespace {

using test_util::read_raw;
using test_util::write_raw;

struct Case {
  bool tied;
};

class Gpt2Parity : public ::testing::TestWithParam<Case> {};

TEST_P(Gpt2Parity, MatchesPyTorch) {
  config::Config cfg;
  auto& m = cfg.model;
  m.vocab_size = 100, m.padded_vocab_size = 128, m.n_layer = 2, m.n_head = 2, m.d_model = 32, m.max_seq_len = 24;
  m.tie_embeddings = GetParam().tied;
  auto& tc = cfg.train;
  tc.lr = 1e-2, tc.min_lr = 1e-3, tc.warmup_steps = 3, tc.steps = 10, tc.weight_decay = 0.1, tc.grad_clip = 1.0;
  const int B = 2, T = 16;

  Model model(m, B, T);
  model.init(7);
  // perturb every parameter (biases and LayerNorms too) so that no gradient path is trivially zero
  Rng rng(11);
  for (const auto& v : model.table().views()) {
    size_t rows = (v.name == "wte" || v.name == "lm_head.weight") ? size_t(m.vocab_size) * m.d_model : v.size;
    for (size_t i = 0; i < rows; i++) model.params()[v.offset + i] += float(rng.normal() * 0.05);
  }
  std::vector<int32_t> tokens(size_t(B) * (T + 1));
  for (auto& t : tokens) t = int32_t(rng.next_u64() % m.vocab_size);
  std::vector<int> x(size_t(B) * T), y(size_t(B) * T);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) x[b * T + t] = tokens[b * (T + 1) + t], y[b * T + t] = tokens[b * (T + 1) + t + 1];

  fs::path dir = fs::temp_directory_path() / ("kvm_parity_" + std::to_string(GetParam().tied) + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  json::Array layout;
  for (const auto& v : model.table().views()) {
    json::Array shape;
    for (int d : v.shape) shape.push_back(d);
    layout.push_back(json::Object{{"name", v.name}, {"shape", shape}, {"offset", uint64_t(v.offset)}});
  }
  std::ofstream(dir / "layout.json") << json::dump(layout);
  json::Object jc{{"vocab_size", m.vocab_size}, {"padded_vocab_size", m.padded_vocab_size}, {"n_layer", m.n_layer},
                  {"n_head", m.n_head}, {"d_model", m.d_model}, {"max_seq_len", m.max_seq_len},
                  {"tie_embeddings", m.tie_embeddings}, {"B", B}, {"T", T}, {"lr", tc.lr}, {"min_lr", tc.min_lr},
                  {"warmup_steps", tc.warmup_steps}, {"steps", tc.steps}, {"weight_decay", tc.weight_decay},
                  {"beta1", tc.beta1}, {"beta2", tc.beta2}, {"eps", tc.eps}, {"grad_clip", tc.grad_clip}};
  std::ofstream(dir / "config.json") << json::dump(jc);
  const size_t P = model.table().total();
  write_raw(dir / "params.bin", model.params(), P);
  write_raw(dir / "tokens.bin", tokens.data(), tokens.size());

  std::string python = std::getenv("KVMTRAIN_PYTHON") ? std::getenv("KVMTRAIN_PYTHON") : "/usr/bin/python3";
  std::string script = std::string(KVMTRAIN_SOURCE_DIR) + "/tests/reference/gpt2_ref.py";
  std::string cmd = "OMP_NUM_THREADS=1 " + python + " " + script + " " + dir.string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "the PyTorch reference failed: " << cmd;

  // forward: logits and loss
  model.zero_grad();
  model.forward(x.data(), B, T);
  const size_t NL = size_t(B) * T * m.padded_vocab_size;
  std::vector<float> logits(model.logits(), model.logits() + NL);
  auto ref_logits = read_raw(dir / "logits.bin", NL);
  float max_logit_diff = 0;
  for (size_t i = 0; i < NL; i++) max_logit_diff = std::max(max_logit_diff, std::fabs(logits[i] - ref_logits[i]));
  EXPECT_LE(max_logit_diff, 2e-5f);

  const float loss = model.loss(y.data(), 1.0f / float(B * T));
  model.backward();
  auto result = json::parse(std::string(std::istreambuf_iterator<char>(std::ifstream(dir / "result.json").rdbuf()), {}));
  const auto& ref_losses = result.at("losses").array();
  EXPECT_NEAR(loss, ref_losses[0].number(), 1e-5);

  // backward: every parameter gradient
  auto ref_grads = read_raw(dir / "grads.bin", P);
  for (const auto& v : model.table().views()) {
    float max_ref = 0, max_diff = 0;
    for (size_t i = 0; i < v.size; i++) {
      max_ref = std::max(max_ref, std::fabs(ref_grads[v.offset + i]));
      max_diff = std::max(max_diff, std::fabs(model.grads()[v.offset + i] - ref_grads[v.offset + i]));
    }
    EXPECT_GT(max_ref, 0.0f) << v.name << ": the reference gradient is zero, the test would prove nothing";
    EXPECT_LE(max_diff, 1e-4f * max_ref + 1e-7f) << v.name << " (max |g_ref| " << max_ref << ")";
  }

  // 10 AdamW steps on the same batch
  AdamW opt(model.table(), tc);
  for (int step = 0; step < tc.steps; step++) {
    model.zero_grad();
    model.forward(x.data(), B, T);
    float l = model.loss(y.data(), 1.0f / float(B * T));
    model.backward();
    EXPECT_NEAR(l, ref_losses[step].number(), 1e-4) << "step " << step;
    float norm = grad_norm(model.grads(), P);
    opt.step(model.params(), model.grads(), lr_at(tc, step), clip_scale(norm, float(tc.grad_clip)));
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, Gpt2Parity, ::testing::Values(Case{true}, Case{false}),
                         [](const auto& info) { return info.param.tied ? "tied" : "untied"; });

}  // namespace
