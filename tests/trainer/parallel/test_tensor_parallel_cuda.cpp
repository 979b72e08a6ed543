// Tensor parallelism on cuda under mpiexec -n 2: the TP = 2 model on the cuda backend against the
// TP = 1 model on cpu that every rank builds itself, on logits, loss and every gathered gradient,
// for GPT-2 (a vocabulary shard with padding columns) and the swa/kvm hybrid with every backbone
// option, with and without block recompute. The model's own collectives work on device memory:
// over NCCL where every rank has its own GPU (as training does), else the ranks share a GPU
// (NCCL refuses two ranks on one device) and a test communicator stages them through host copies
// over MPI, so that the model's device path runs on a one-GPU machine too. Skipped without a GPU.
// Tolerances as test_model_cuda's fp32 ones: |cuda - cpu| <= 1e-4 * max|cpu| per tensor (the
// logits of the batch, each gradient), the loss within 1e-4 relative.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "tests/mpi_test_main.h"
#include "tests/test_util.h"
#include "tests/trainer/model/small_models.h"
#include "kernels/backend.h"
#include "trainer/parallel/communicator.h"
#include "trainer/model/model.h"
#include "common/rng.h"
#include "trainer/parallel/tensor_parallel.h"

namespace {

// The collectives the model makes (all_reduce_sum, all_gather) on buffers of `be`'s memory,
// through host copies over the host communicator `host`; the model makes no other call.
class StagedCommunicator final : public Communicator {
 public:
  StagedCommunicator(Communicator& host, const Backend& be) : host_(host), be_(be) {}
  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  std::string backend() const override { return "staged"; }
  void all_reduce_sum(float* buf, size_t n) override {
    std::vector<float> h = test_models::to_host(be_, buf, n);
    host_.all_reduce_sum(h.data(), n);
    be_.from_host(buf, h.data(), n * sizeof(float));
  }
  void all_gather(const float* send, float* recv, size_t n) override {
    std::vector<float> h = test_models::to_host(be_, send, n), all(n * size_t(size()));
    host_.all_gather(h.data(), all.data(), n);
    be_.from_host(recv, all.data(), all.size() * sizeof(float));
  }
  void reduce_scatter_sum(const float*, float*, size_t) override { unused(); }
  void broadcast(void*, size_t, int) override { unused(); }
  std::unique_ptr<Request> all_reduce_sum_async(float*, size_t) override { unused(); }
  std::unique_ptr<Request> reduce_scatter_sum_async(float*, const std::vector<size_t>&) override { unused(); }
  void barrier() override { host_.barrier(); }
  std::unique_ptr<Communicator> split(int, int) override { unused(); }

 private:
  [[noreturn]] static void unused() { throw std::logic_error("StagedCommunicator: not a collective of the model"); }
  Communicator& host_;
  const Backend& be_;
};

using test_models::tokens;
using test_util::expect_close_to_max;

class TensorParallelCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    const int devices = kernels::cuda::device_count();
    if (devices == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount found none)";
    tp = world->split(0, world->rank());
    be = &backend_for(Backend::Device::cuda, tp->rank());  // GPU rank % devices
    if (devices >= tp->size()) device = make_nccl_communicator(*tp);
    else device = std::make_unique<StagedCommunicator>(*tp, *be);
  }

  // TP = world size on cuda against TP = 1 on cpu, one forward, loss and backward
  void expect_equal(const config::ModelConfig& m, bool recompute, const std::string& what) {
    SCOPED_TRACE(what + " TP=" + std::to_string(tp->size()) + " over " + device->backend());
    const int B = 2, T = 13, BT = B * T, Vp = m.padded_vocab_size;
    const float tol = 1e-4f;
    Model ref(m, B, T), model(m, B, T, recompute, tp.get(), *be, device.get());
    test_models::perturb(ref, 3);
    std::vector<float> shards(model.table().total(), 0.0f);
    for (const auto& v : model.table().views())
      tp::extract(v, ref.params() + ref.table().at(v.name).offset, shards.data() + v.offset);
    model.params_from_host(shards.data());
    auto x = tokens(size_t(BT), m.vocab_size, 5), y = tokens(size_t(BT), m.vocab_size, 6, true);
    const float dloss = 1.0f / float(BT - 2);

    ref.zero_grad();
    ref.forward(x.data(), B, T);
    std::vector<float> ref_logits(ref.logits(), ref.logits() + size_t(BT) * Vp);
    const float ref_loss = ref.loss(y.data(), dloss);
    ref.backward();

    model.zero_grad();
    model.forward(x.data(), B, T);
    // every rank's (BT, Vl) slice of the logits, side by side as (BT, Vp)
    const int Vl = model.logits_width(), TP = tp->size();
    std::vector<float> copy, all(size_t(BT) * Vp), logits(size_t(BT) * Vp);
    tp->all_gather(model.logits_host(0, size_t(BT), copy), all.data(), size_t(BT) * Vl);
    for (int r = 0; r < TP; r++)
      for (int i = 0; i < BT; i++)
        std::copy_n(all.data() + (size_t(r) * BT + i) * Vl, Vl, logits.data() + size_t(i) * Vp + size_t(r) * Vl);
    expect_close_to_max(logits.data(), ref_logits.data(), logits.size(), tol, "logits");
    const float loss = model.loss(y.data(), dloss);
    EXPECT_LE(std::fabs(loss - ref_loss), tol * std::fabs(ref_loss)) << "loss " << loss << " vs " << ref_loss;
    model.backward();

    const std::vector<float> grads = test_models::to_host(*be, model.grads(), model.table().total());
    for (const auto& v : model.table().views()) {
      const auto& f = ref.table().at(v.name);
      const std::vector<float> g = tp::gather(*tp, v, grads.data());
      expect_close_to_max(g.data(), ref.grads() + f.offset, f.size, tol, "d" + v.name);
    }
  }

  std::unique_ptr<Communicator> tp, device;  // the tensor group over host memory, and over the GPU's
  const Backend* be = nullptr;
};

TEST_F(TensorParallelCuda, Gpt2EqualsOneCpuProcess) { expect_equal(test_models::gpt2(16), false, "gpt2"); }

TEST_F(TensorParallelCuda, KvmSwaHybridEqualsOneCpuProcess) { expect_equal(test_models::hybrid(), false, "hybrid"); }

TEST_F(TensorParallelCuda, HybridWithBiasAndRecompute) {
  auto m = test_models::hybrid();
  m.bias = true, m.tie_embeddings = true, m.mixers = {config::Mixer::kvm, config::Mixer::attn, config::Mixer::swa};
  expect_equal(m, true, "hybrid+bias+recompute");
}

}  // namespace
