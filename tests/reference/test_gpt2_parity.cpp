// kvmtrain's GPT-2 against an independent PyTorch model (tests/reference/gpt2_ref.py, Debian's
// torch 1.13, fp32, 1 thread): logits, loss, every parameter gradient, and the losses of 10
// AdamW steps with clipping and a warm-up/cosine schedule on a fixed batch; and the same with a
// loss mask (the batch built by data::Batch; the reference's cross_entropy ignores target -1 and
// averages over the scored targets).
//
// Tolerances (both sides fp32; llm.c accepts 1e-2 on logits/loss and 2e-2 on gradients):
//   logits: max |diff| <= 2e-5;   loss: |diff| <= 1e-5;
//   gradients: per tensor, max |diff| <= 1e-4 * max|g_ref| + 1e-7;
//   10-step losses: |diff| <= 1e-4 at every step.
#include <gtest/gtest.h>

#include "data/batch.h"
#include "tests/reference/parity_harness.h"

namespace {

struct Case {
  bool tied;
  bool masked;
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
  Rng rng(11);
  parity::Batch batch = parity::perturb_and_draw(model, m, B, T, rng);
  if (GetParam().masked) {  // about a third of the targets scored, in runs
    data::Batch masked(B, T);
    masked.windows = batch.tokens;
    masked.mask.resize(batch.tokens.size());
    for (size_t i = 0; i < masked.mask.size(); i++) masked.mask[i] = uint8_t(rng.next_u64() % 3 == 0);
    masked.split();
    batch.mask = masked.mask, batch.x = masked.inputs, batch.y = masked.targets;
    ASSERT_GT(batch.scored(), 0);
    ASSERT_LT(batch.scored(), B * T);
  }

  const auto dir = parity::fresh_dir("kvm_parity_" + std::to_string(GetParam().tied) + std::to_string(GetParam().masked));
  json::Value result;
  ASSERT_NO_FATAL_FAILURE(parity::run_reference(dir, "tests/reference/gpt2_ref.py", model,
                                                parity::config_json(m, tc, B, T), batch, result));
  parity::expect_matches_reference(model, cfg, batch, B, T, dir, result);
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, Gpt2Parity,
                         ::testing::Values(Case{true, false}, Case{false, false}, Case{true, true}),
                         [](const auto& info) {
                           return std::string(info.param.tied ? "tied" : "untied") + (info.param.masked ? "_masked" : "");
                         });

}  // namespace
