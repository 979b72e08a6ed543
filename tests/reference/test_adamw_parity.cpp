// AdamW's muP ratios and learning-rate-scheduled weight decay (trainer/optim/optimizer.h) against
// torch.optim.AdamW with one param group per tensor (tests/reference/adamw_ref.py, torch 1.13,
// fp32): 6 steps of warm-up then cosine with gradient scales, tensors with ratios 1, 4, 0.5 and 2,
// decaying or not. Every parameter after every step within 2e-6, the moments after the last
// within 1e-7 (m) and 1e-9 (v) plus 1e-5 relative; a wrong ratio or decay is off by > 1e-4.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "tests/reference/parity_harness.h"

namespace {

class AdamWParity : public ::testing::TestWithParam<config::WeightDecaySchedule> {};

TEST_P(AdamWParity, MupRatiosAndDecayScheduleMatchPyTorchParamGroups) {
  TensorTable table;
  table.add("plain", {7, 5}, true);
  table.add("wide", {6, 9}, true, -1, 1, 0, 1, 4.0f);
  table.add("narrow", {3, 4}, true, -1, 1, 0, 1, 0.5f);
  table.add("bias", {11}, false, -1, 1, 0, 1, 2.0f);
  table.add("norm", {5}, false);
  config::TrainConfig tc;
  tc.lr = 1e-2, tc.min_lr = 1e-3, tc.warmup_steps = 2, tc.steps = 6, tc.weight_decay = 0.3;
  tc.weight_decay_schedule = GetParam();
  const std::vector<float> scales{1.0f, 0.6f, 1.0f, 0.8f, 1.0f, 0.5f};
  const size_t P = table.total();

  Rng rng(42);
  std::vector<float> params(P), grads(P * tc.steps);
  fill_normal(params.data(), P, 0.5f, rng);
  fill_normal(grads.data(), grads.size(), 1.0f, rng);

  const auto dir = parity::fresh_dir("adamw_parity");
  json::Array views, grad_scales;
  for (const auto& v : table.views())
    views.push_back(json::Object{{"name", v.name}, {"offset", uint64_t(v.offset)}, {"size", uint64_t(v.size)},
                                 {"decay", v.decay}, {"mup_ratio", double(v.mup_ratio)}});
  for (float s : scales) grad_scales.push_back(double(s));
  json::Object cfg{{"lr", tc.lr}, {"min_lr", tc.min_lr}, {"warmup_steps", tc.warmup_steps}, {"steps", tc.steps},
                   {"weight_decay", tc.weight_decay},
                   {"weight_decay_schedule", config::to_string(tc.weight_decay_schedule)}, {"beta1", tc.beta1},
                   {"beta2", tc.beta2}, {"eps", tc.eps}, {"grad_scales", grad_scales}, {"views", views}};
  std::ofstream(dir / "config.json") << json::dump(cfg);
  test_util::write_raw(dir / "params.bin", params.data(), P);
  test_util::write_raw(dir / "grads.bin", grads.data(), grads.size());
  const char* python = std::getenv("KVMTRAIN_PYTHON");
  const std::string cmd = "OMP_NUM_THREADS=1 " + std::string(python ? python : "/usr/bin/python3") + " " +
                          KVMTRAIN_SOURCE_DIR + "/tests/reference/adamw_ref.py " + dir.string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "the PyTorch reference failed: " << cmd;
  const auto after = test_util::read_raw(dir / "after.bin", P * tc.steps);

  AdamW opt(table, tc);
  for (int step = 0; step < tc.steps; step++) {
    opt.step(params.data(), grads.data() + P * step, lr_at(tc, step), scales[step]);
    for (const auto& v : table.views())
      for (size_t i = v.offset; i < v.offset + v.size; i++)
        ASSERT_NEAR(params[i], after[P * step + i], 2e-6) << v.name << " step " << step;
  }
  const auto m = test_util::read_raw(dir / "m.bin", P), v2 = test_util::read_raw(dir / "v.bin", P);
  for (const auto& v : table.views())
    for (size_t i = v.offset; i < v.offset + v.size; i++) {
      EXPECT_NEAR(opt.m()[i], m[i], 1e-7 + 1e-5 * std::fabs(m[i])) << v.name;
      EXPECT_NEAR(opt.v()[i], v2[i], 1e-9 + 1e-5 * std::fabs(v2[i])) << v.name;
    }
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Schedules, AdamWParity,
                         ::testing::Values(config::WeightDecaySchedule::constant, config::WeightDecaySchedule::lr),
                         [](const auto& info) { return config::to_string(info.param); });

}  // namespace
