// Data parallelism on cuda under mpiexec (-n 2 and -n 4), one GPU per rank, over NCCL: the checks of
// data_parallel_checks.h on the cuda backend (N ranks equal one cuda process with the global batch,
// here with the gradients reduced in buckets during the backward, as training does; ZeRO-1 equals
// unsharded AdamW; buckets during the backward equal one reduction after it), and with 4 ranks
// data x tensor parallelism (2 x 2) built by Mesh as training builds it, whose gradient buckets
// (non-blocking, one NCCL communicator) run while the model's tensor all-reduces (blocking,
// another) are issued, against the TP = 1 model on cpu with the global batch.
// Tolerances as test_model_cuda's fp32 ones: gradients |diff| <= 1e-4 * max|reference| per tensor,
// losses within 1e-4 (relative for data x tensor). Skipped (every rank alike) where a rank has no
// GPU of its own.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "tests/mpi_test_main.h"
#include "tests/nccl_ranks.h"
#include "tests/trainer/model/small_models.h"
#include "tests/trainer/parallel/data_parallel_checks.h"
#include "trainer/parallel/mesh.h"
#include "trainer/parallel/tensor_parallel.h"

namespace {

constexpr float kTol = 1e-4f;

class DataParallelCuda : public test_util::NcclRanks {};  // nccl: every rank

TEST_F(DataParallelCuda, Zero1EqualsUnshardedAdamW) { dp_checks::zero1_equals_unsharded_adamw(*nccl, *be); }

TEST_F(DataParallelCuda, RanksEqualOneProcessWithTheGlobalBatch) {
  dp_checks::ranks_equal_one_process(*nccl, *be, 256, kTol);
}

TEST_F(DataParallelCuda, BucketsDuringTheBackwardEqualOneReductionAfterIt) {
  dp_checks::buckets_equal_one_reduction(*nccl, *be);
}

// One forward, loss and backward of the data x tensor mesh against the TP = 1 model on cpu with the
// global batch: the loss, and every gradient the data-parallel reduction leaves averaged (all of
// them; under ZeRO-1 this rank's range), gathered over the tensor group.
void expect_data_times_tensor_equal(Mesh& mesh, const Backend& be, const config::ModelConfig& m, bool zero1,
                                    const std::string& what) {
  SCOPED_TRACE(what + (zero1 ? " ZeRO-1" : " all-reduce"));
  const int D = mesh.data_size(), B = 2, Bg = B * D, T = 13;
  Communicator& tp = *mesh.tensor();
  Model ref(m, Bg, T), model(m, B, T, false, &tp, be, mesh.tensor_device());
  test_models::perturb(ref, 3);
  std::vector<float> shards(model.table().total(), 0.0f);
  for (const auto& v : model.table().views())
    tp::extract(v, ref.params() + ref.table().at(v.name).offset, shards.data() + v.offset);
  model.params_from_host(shards.data());
  const auto x = test_models::tokens(size_t(Bg) * T, m.vocab_size, 5),
             y = test_models::tokens(size_t(Bg) * T, m.vocab_size, 6, true);
  int scored = 0;
  for (int t : y) scored += t != -1;

  ref.zero_grad();
  ref.forward(x.data(), Bg, T);
  const float ref_loss = ref.loss(y.data(), 1.0f / float(scored));
  ref.backward();

  // data rank d takes rows [d*B, (d+1)*B); each rank's gradient is D times its part of the global
  // one, so that the mean over data ranks is the global batch's
  DataParallel dp(mesh.data(), model.table(), config::TrainConfig{}, 512, zero1, be);
  model.on_grads_ready([&](size_t begin, size_t end) { dp.gradients_ready(begin, end); });
  const size_t r0 = size_t(mesh.data_rank()) * B * T;
  int mine = 0;
  for (size_t i = r0; i < r0 + size_t(B) * T; i++) mine += y[i] != -1;
  model.zero_grad();
  model.forward(x.data() + r0, B, T);
  const float loss = float(dp.sum(double(model.loss(y.data() + r0, float(D) / float(scored))) * mine) / scored);
  EXPECT_LE(std::fabs(loss - ref_loss), kTol * std::fabs(ref_loss)) << "loss " << loss << " vs " << ref_loss;
  dp.start_gradients(model.grads());
  model.backward();
  dp.finish_gradients();
  EXPECT_GT(dp.buckets_overlapped(), 1) << "buckets reduced during the backward, beside its tensor all-reduces";

  const size_t total = model.table().total();
  const std::vector<float> grads = test_models::to_host(be, model.grads(), total);
  std::vector<float> averaged(total, 0.0f);  // 1 where dp left the mean over data ranks
  std::fill(averaged.begin() + long(dp.grads_begin()), averaged.begin() + long(dp.grads_end()), 1.0f);
  for (const auto& v : model.table().views()) {
    const auto& f = ref.table().at(v.name);
    const std::vector<float> g = tp::gather(tp, v, grads.data()), in_range = tp::gather(tp, v, averaged.data());
    const float* want = ref.grads() + f.offset;
    float scale = 0, diff = 0;
    for (size_t i = 0; i < f.size; i++) {
      scale = std::max(scale, std::fabs(want[i]));
      if (in_range[i] != 0) diff = std::max(diff, std::fabs(g[i] - want[i]));
      ASSERT_TRUE(std::isfinite(g[i])) << v.name << "[" << i << "]";
    }
    EXPECT_LE(diff, kTol * scale) << "d" << v.name;
  }
}

TEST_F(DataParallelCuda, DataTimesTensorEqualsOneCpuProcess) {
  // needs 4 ranks; no GTEST_SKIP at 2: ctest would report the whole run as skipped
  if (world->size() != 4) return;
  config::ParallelConfig layout;
  layout.data = 2, layout.tensor = 2;
  Mesh mesh(make_world_communicator(), layout, *be, "the same on every rank");
  ASSERT_EQ(mesh.data().backend(), "nccl");
  ASSERT_NE(mesh.tensor_device(), nullptr);
  for (bool zero1 : {false, true}) {
    expect_data_times_tensor_equal(mesh, *be, test_models::gpt2(16), zero1, "gpt2");
    expect_data_times_tensor_equal(mesh, *be, test_models::hybrid(), zero1, "hybrid");
  }
}

}  // namespace
