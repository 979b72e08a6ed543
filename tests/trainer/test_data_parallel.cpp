// Data parallelism under mpiexec (-n 2 and -n 4): N ranks with batch B equal one process with
// batch N*B (loss, gradients, 10 AdamW steps), and ZeRO-1 equals unsharded AdamW.
// Tolerances: gradients and losses are sums in another order than the single process's, so
// they agree to fp32 rounding: |diff| <= 1e-5 * max|g| per tensor, losses within 1e-5.
// ZeRO-1 runs the same element-wise update on each range: parameters are bit-identical.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "trainer/communicator.h"
#include "trainer/data_parallel.h"
#include "trainer/model.h"
#include "trainer/optimizer.h"
#include "trainer/rng.h"
#include "tests/mpi_test_main.h"

namespace {


config::Config tiny_config() {
  config::Config cfg;
  auto& m = cfg.model;
  m.vocab_size = 100, m.padded_vocab_size = 128, m.n_layer = 2, m.n_head = 2, m.d_model = 32, m.max_seq_len = 16;
  cfg.train.lr = 1e-2, cfg.train.warmup_steps = 2, cfg.train.steps = 10;
  return cfg;
}

TEST(DataParallel, Zero1EqualsUnshardedAdamW) {
  auto cfg = tiny_config();
  Model a(cfg.model, 1, 4), b(cfg.model, 1, 4);
  a.init(3);
  b.init(3);
  const size_t P = a.table().total();
  AdamW full(a.table(), cfg.train);
  DataParallel dp(*world, b.table(), cfg.train);
  EXPECT_LT(dp.optimizer().end() - dp.optimizer().begin(), P) << "ZeRO-1 holds only a shard of the moments";
  Rng rng(5);  // every rank draws the same gradients
  std::vector<float> g(P);
  for (int step = 0; step < 10; step++) {
    for (auto& x : g) x = float(rng.normal());
    full.step(a.params(), g.data(), lr_at(cfg.train, step), 0.7f);
    dp.step(b.params(), g.data(), lr_at(cfg.train, step), 0.7f);
  }
  for (size_t i = 0; i < P; i++) ASSERT_EQ(a.params()[i], b.params()[i]) << i;
  std::vector<float> m(P), v(P);
  dp.gather_moments(m.data(), v.data());
  for (size_t i = 0; i < P; i++) ASSERT_EQ(m[i], full.m()[i]) << i;
  for (size_t i = 0; i < P; i++) ASSERT_EQ(v[i], full.v()[i]) << i;
}

TEST(DataParallel, RanksEqualOneProcessWithTheGlobalBatch) {
  auto cfg = tiny_config();
  const int N = world->size(), r = world->rank(), B = 2, T = 16;
  Model local(cfg.model, B, T), single(cfg.model, N * B, T);
  local.init(9);
  single.init(9);
  const size_t P = local.table().total();
  // the global batch: N*B rows; rank r takes rows r, r+N, ... as the loader does
  Rng rng(17);
  std::vector<int> x(N * B * T), y(N * B * T), xl(B * T), yl(B * T);
  for (size_t i = 0; i < x.size(); i++) x[i] = int(rng.next_u64() % 100), y[i] = int(rng.next_u64() % 100);
  for (int j = 0; j < B; j++)
    for (int t = 0; t < T; t++) xl[j * T + t] = x[(j * N + r) * T + t], yl[j * T + t] = y[(j * N + r) * T + t];

  DataParallel dp(*world, local.table(), cfg.train);
  AdamW opt(single.table(), cfg.train);
  for (int step = 0; step < 10; step++) {
    local.zero_grad();
    local.forward(xl.data(), B, T);
    float loss = dp.mean(local.loss(yl.data(), 1.0f / float(B * T)));
    local.backward();
    dp.average_gradients(local.grads());

    single.zero_grad();
    single.forward(x.data(), N * B, T);
    float want = single.loss(y.data(), 1.0f / float(N * B * T));
    single.backward();
    EXPECT_NEAR(loss, want, 1e-5) << "step " << step;
    if (step == 0) {
      for (const auto& view : local.table().views()) {
        float max_g = 0, max_diff = 0;
        for (size_t i = view.offset; i < view.offset + view.size; i++) {
          max_g = std::max(max_g, std::fabs(single.grads()[i]));
          max_diff = std::max(max_diff, std::fabs(local.grads()[i] - single.grads()[i]));
        }
        EXPECT_LE(max_diff, 1e-5f * max_g + 1e-9f) << view.name;
      }
    }
    float lr = lr_at(cfg.train, step);
    dp.step(local.params(), local.grads(), lr, clip_scale(grad_norm(local.grads(), P), 1.0f));
    opt.step(single.params(), single.grads(), lr, clip_scale(grad_norm(single.grads(), P), 1.0f));
  }
}

}  // namespace
