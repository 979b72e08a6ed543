#pragma once
// The data-parallel checks both backends run: test_data_parallel (MPI over host memory) and
// test_data_parallel_cuda (NCCL over GPU memory). N ranks with batch B equal one process with
// batch N*B built by every rank on the same backend (loss, gradients, 10 AdamW steps), with ZeRO-1
// and without; ZeRO-1 equals unsharded AdamW; gradients reduced in many buckets during the
// backward equal one reduction after it, and the buckets are the ones the sizes imply, started as
// the backward finishes their ranges.
// Tolerances: gradients and losses are sums in another order than the single process's, so they
// agree to fp32 rounding: |diff| <= tol * max|g| per tensor, losses within tol (1e-5 on cpu);
// buckets change only the order of the sum over ranks: 1e-6 * max|g|.
// ZeRO-1 runs the same element-wise update on each range: parameters are bit-identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/rng.h"
#include "kernels/backend.h"
#include "tests/trainer/model/small_models.h"
#include "trainer/model/model.h"
#include "trainer/optim/optimizer.h"
#include "trainer/parallel/communicator.h"
#include "trainer/parallel/data_parallel.h"

namespace dp_checks {

using test_models::to_host;

// The averaged gradients `got` (host copy of the model's, where `dp` leaves them: this rank's range
// under ZeRO-1) against `want`, per tensor: |diff| <= tol * max|want|.
inline void expect_grads_near(const TensorTable& table, const float* got, const DataParallel& dp, const float* want,
                              float tol, const char* what) {
  for (const auto& view : table.views()) {
    float max_g = 0, max_diff = 0;
    const size_t lo = std::max(view.offset, dp.grads_begin()), hi = std::min(view.offset + view.size, dp.grads_end());
    for (size_t i = lo; i < hi; i++) {
      max_g = std::max(max_g, std::fabs(want[i]));
      max_diff = std::max(max_diff, std::fabs(got[i] - want[i]));
    }
    EXPECT_LE(max_diff, tol * max_g + 1e-9f) << what << ": " << view.name;
  }
}

inline config::Config tiny_config() {
  config::Config cfg;
  auto& m = cfg.model;
  m.vocab_size = 100, m.padded_vocab_size = 128, m.n_layer = 2, m.n_head = 2, m.d_model = 32, m.max_seq_len = 16;
  cfg.train.lr = 1e-2, cfg.train.warmup_steps = 2, cfg.train.steps = 10;
  return cfg;
}

// ZeRO-1 over `comm` against AdamW over all parameters, on `be`, fed the same gradients.
inline void zero1_equals_unsharded_adamw(Communicator& comm, const Backend& be) {
  auto cfg = tiny_config();
  Model a(cfg.model, 1, 4, false, nullptr, be), b(cfg.model, 1, 4, false, nullptr, be);
  a.init(3);
  b.init(3);
  const size_t P = a.table().total();
  AdamW full(a.table(), cfg.train, 0, SIZE_MAX, be);
  DataParallel dp(comm, b.table(), cfg.train, 0, true, be);
  EXPECT_LT(dp.optimizer().end() - dp.optimizer().begin(), P) << "ZeRO-1 holds only a shard of the moments";
  Rng rng(5);  // every rank draws the same gradients
  std::vector<float> g(P);
  DeviceBuffer grads(be, P);
  for (int step = 0; step < 10; step++) {
    for (auto& x : g) x = float(rng.normal());
    be.from_host(grads.data(), g.data(), grads.bytes());
    full.step(a.params(), grads.data(), lr_at(cfg.train, step), 0.7f);
    dp.step(b.params(), grads.data(), lr_at(cfg.train, step), 0.7f);
  }
  const std::vector<float> pa = to_host(be, a.params(), P), pb = to_host(be, b.params(), P);
  for (size_t i = 0; i < P; i++) ASSERT_EQ(pa[i], pb[i]) << i;
  std::vector<float> m(P), v(P);
  dp.gather_moments(m.data(), v.data());
  const std::vector<float> fm = to_host(be, full.m(), P), fv = to_host(be, full.v(), P);
  for (size_t i = 0; i < P; i++) ASSERT_EQ(m[i], fm[i]) << i;
  for (size_t i = 0; i < P; i++) ASSERT_EQ(v[i], fv[i]) << i;
}

// The ranks of `comm` with batch B on `be` against one process with the global batch on `be`, with
// ZeRO-1 and without. bucket_floats 0: one reduction after the backward (average_gradients); else
// buckets of that size reduced during it, as training does.
inline void ranks_equal_one_process(Communicator& comm, const Backend& be, size_t bucket_floats, float tol) {
  auto cfg = tiny_config();
  const int N = comm.size(), r = comm.rank(), B = 2, T = 16;
  Model local(cfg.model, B, T, false, nullptr, be), single(cfg.model, N * B, T, false, nullptr, be);
  const size_t P = local.table().total();
  // the global batch: N*B rows; rank r takes rows r, r+N, ... as the loader does
  Rng rng(17);
  std::vector<int> x(N * B * T), y(N * B * T), xl(B * T), yl(B * T);
  for (size_t i = 0; i < x.size(); i++) x[i] = int(rng.next_u64() % 100), y[i] = int(rng.next_u64() % 100);
  for (int j = 0; j < B; j++)
    for (int t = 0; t < T; t++) xl[j * T + t] = x[(j * N + r) * T + t], yl[j * T + t] = y[(j * N + r) * T + t];

  for (bool zero1 : {true, false}) {  // each rank updates its range and all-gathers; or everything
    const char* mode = zero1 ? "ZeRO-1" : "all-reduce";
    local.init(9);
    single.init(9);
    DataParallel dp(comm, local.table(), cfg.train, bucket_floats, zero1, be);
    local.on_grads_ready([&](size_t begin, size_t end) { dp.gradients_ready(begin, end); });
    AdamW opt(single.table(), cfg.train, 0, SIZE_MAX, be);
    for (int step = 0; step < 10; step++) {
      local.zero_grad();
      local.forward(xl.data(), B, T);
      float loss = dp.mean(local.loss(yl.data(), 1.0f / float(B * T)));
      if (bucket_floats) dp.start_gradients(local.grads());
      local.backward();
      if (bucket_floats) dp.finish_gradients();
      else dp.average_gradients(local.grads());

      single.zero_grad();
      single.forward(x.data(), N * B, T);
      float want = single.loss(y.data(), 1.0f / float(N * B * T));
      single.backward();
      EXPECT_NEAR(loss, want, tol) << "step " << step << " (" << mode << ")";
      const float norm = float(std::sqrt(dp.grad_norm_squared(local.grads(), nullptr)));
      const float single_norm = std::sqrt(norm_squared(be, single.grads(), P));
      if (step == 0) {  // later steps add the drift of the parameters
        expect_grads_near(local.table(), to_host(be, local.grads(), P).data(), dp,
                          to_host(be, single.grads(), P).data(), tol, mode);
        EXPECT_NEAR(norm, single_norm, tol * norm) << mode;
      }
      float lr = lr_at(cfg.train, step);
      dp.step(local.params(), local.grads(), lr, clip_scale(norm, 1.0f));
      opt.step(single.params(), single.grads(), lr, clip_scale(single_norm, 1.0f));
    }
  }
}

// Many buckets reduced during the backward against one reduction after it, on `be` over `comm`.
inline void buckets_equal_one_reduction(Communicator& comm, const Backend& be) {
  auto cfg = tiny_config();
  cfg.model.tie_embeddings = false;  // the head's gradient is final first, at the top of the buffer
  const int N = comm.size(), r = comm.rank(), B = 2, T = 16;
  const size_t bucket = 256;  // floats: dozens of buckets over the tiny model
  Rng rng(23 + uint64_t(r));  // each rank its own batch
  std::vector<int> x(B * T), y(B * T);
  for (size_t i = 0; i < x.size(); i++) x[i] = int(rng.next_u64() % 100), y[i] = int(rng.next_u64() % 100);
  for (bool zero1 : {true, false}) {
    const char* mode = zero1 ? "ZeRO-1" : "all-reduce";
    Model a(cfg.model, B, T, false, nullptr, be), b(cfg.model, B, T, false, nullptr, be);
    a.init(4);
    b.init(4);
    const size_t P = a.table().total(), expect_buckets = (P + bucket - 1) / bucket;
    DataParallel bucketed(comm, a.table(), cfg.train, bucket, zero1, be), whole(comm, b.table(), cfg.train, 0, zero1, be);
    std::vector<std::pair<size_t, int>> seen;  // (begin of each final range, buckets started by then)
    a.on_grads_ready([&](size_t begin, size_t end) {
      bucketed.gradients_ready(begin, end);
      seen.push_back({begin, bucketed.buckets()});
    });
    for (int step = 0; step < 3; step++) {
      seen.clear();
      for (Model* m : {&a, &b}) {
        m->zero_grad();
        m->forward(x.data(), B, T);
        m->loss(y.data(), 1.0f / float(N * B * T));
      }
      bucketed.start_gradients(a.grads());
      a.backward();
      bucketed.finish_gradients();
      b.backward();
      whole.average_gradients(b.grads());

      // ln_f and the head, each block, then the embedding; each bucket starts once all of it is final
      ASSERT_EQ(seen.size(), size_t(cfg.model.n_layer) + 2) << mode;
      EXPECT_EQ(seen.front().first, a.table().at("ln_f.weight").offset) << mode;
      for (const auto& [begin, started] : seen)
        EXPECT_EQ(size_t(started), begin == 0 ? expect_buckets : (P - begin) / bucket)
            << mode << ": range from " << begin;
      EXPECT_EQ(bucketed.buckets(), int(expect_buckets)) << mode;
      EXPECT_EQ(bucketed.buckets_overlapped(), int(expect_buckets)) << mode << ": all start during the backward";
      EXPECT_EQ(whole.buckets(), 1) << mode;
      EXPECT_EQ(whole.buckets_overlapped(), 0) << mode;
      expect_grads_near(a.table(), to_host(be, a.grads(), P).data(), bucketed, to_host(be, b.grads(), P).data(), 1e-6f,
                        mode);

      const float lr = lr_at(cfg.train, step);
      bucketed.step(a.params(), a.grads(), lr, 1.0f);
      whole.step(b.params(), b.grads(), lr, 1.0f);
    }
    const std::vector<float> pa = to_host(be, a.params(), P), pb = to_host(be, b.params(), P);
    float max_p = 0, max_diff = 0;
    for (size_t i = 0; i < P; i++) {
      max_p = std::max(max_p, std::fabs(pb[i]));
      max_diff = std::max(max_diff, std::fabs(pa[i] - pb[i]));
    }
    EXPECT_LE(max_diff, 1e-5f * max_p) << mode << ": parameters after 3 steps";
  }
}

}  // namespace dp_checks
