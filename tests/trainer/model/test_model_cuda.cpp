// The whole model on the cuda backend against the cpu backend, on the same weights and batch: the
// trainer above the kernels is one code path (kernels/backend.h), so what differs is the kernels'
// summation order only. Skipped, with a message, where no CUDA device is present.
// Tolerances, each |cuda - cpu| <= tol * max|cpu| over the tensor (a tensor's largest element sets
// its scale, as test_tensor_parallel does), loss |cuda - cpu| <= tol * |cpu|:
//  - layout kernels (split_heads, merge_heads, axpby_rows): 1e-6 (the same float operations up to
//    FMA contraction);
//  - fp32: 1e-4 for logits, loss and every parameter gradient (cuBLASLt without TF32, attention
//    and the KVM core sum in another order; test_backend_ops allows 1e-4 per kernel);
//  - bf16: 2e-2 (a GEMM operand rounded to bf16 flips to the neighbouring value, 2^-8 relative,
//    wherever the fp32 result before it differs in its last bits, and that compounds over the
//    layers); the bf16 weight copies themselves are bit-identical (stochastic rounding is keyed by
//    element, not by device);
//  - 5 AdamW steps: losses within the same tolerance as the first loss, x 10 (the differences
//    feed back through the updates).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "tests/test_util.h"
#include "tests/trainer/model/small_models.h"
#include "kernels/backend.h"
#include "trainer/model/model.h"
#include "trainer/optim/optimizer.h"
#include "common/rng.h"

namespace {

#define SKIP_WITHOUT_GPU() \
  if (kernels::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount found none)"

using test_models::gpt2;
using test_models::hybrid;
using test_models::to_host;
using test_models::tokens;
using test_util::expect_close_to_max;

// A cpu model and a cuda model with the same (GPT-2 init plus noise) weights.
struct Pair {
  Pair(const config::ModelConfig& m, int B, int T, bool bf16)
      : cpu(m, B, T), cuda(m, B, T, false, nullptr, backend_for(Backend::Device::cuda)) {
    cpu.init(7);
    Rng rng(8);
    for (const auto& v : cpu.table().views()) {
      const size_t rows = (v.name == "wte" || v.name == "lm_head.weight") ? size_t(m.vocab_size) * m.d_model : v.size;
      for (size_t i = 0; i < rows; i++) cpu.params()[v.offset + i] += float(rng.normal() * 0.05);
    }
    cuda.params_from_host(cpu.params());
    if (bf16)
      for (Model* model : {&cpu, &cuda}) {
        model->use_bf16();
        model->refresh_bf16(11, 0);
      }
  }
  Model cpu, cuda;
};

void compare_step(const config::ModelConfig& m, bool bf16, const char* name) {
  const int B = 2, T = 19, BT = B * T;
  const float tol = bf16 ? 2e-2f : 1e-4f;
  Pair p(m, B, T, bf16);
  auto x = tokens(size_t(BT), m.vocab_size, 5), y = tokens(size_t(BT), m.vocab_size, 6);
  y[3] = -1;  // an ignored target
  float loss[2];
  std::vector<float> logits[2];  // before loss() overwrites them with their gradient
  for (int k = 0; k < 2; k++) {
    Model& model = k ? p.cuda : p.cpu;
    model.zero_grad();
    model.forward(x.data(), B, T);
    std::vector<float> copy;
    const float* l = model.logits_host(0, size_t(BT), copy);
    logits[k].assign(l, l + size_t(BT) * m.padded_vocab_size);
    loss[k] = model.loss(y.data(), 1.0f / BT);
    model.backward();
  }
  expect_close_to_max(logits[1].data(), logits[0].data(), logits[0].size(), tol, std::string(name) + " logits");
  EXPECT_LE(std::fabs(loss[1] - loss[0]), tol * std::fabs(loss[0])) << name << " loss " << loss[0] << " " << loss[1];
  const auto g = to_host(p.cuda.backend(), p.cuda.grads(), p.cuda.table().total());
  for (const auto& v : p.cpu.table().views())
    expect_close_to_max(g.data() + v.offset, p.cpu.grads() + v.offset, v.size, tol, std::string(name) + " d" + v.name);
}

void compare_adamw(const config::ModelConfig& m, bool bf16, const char* name) {
  const int B = 2, T = 19, BT = B * T, steps = 5;
  const float tol = 10 * (bf16 ? 2e-2f : 1e-4f);
  Pair p(m, B, T, bf16);
  config::TrainConfig tc;
  AdamW opt_cpu(p.cpu.table(), tc), opt_cuda(p.cuda.table(), tc, 0, SIZE_MAX, p.cuda.backend());
  for (int s = 0; s < steps; s++) {
    auto x = tokens(size_t(BT), m.vocab_size, 20 + s), y = tokens(size_t(BT), m.vocab_size, 40 + s);
    float loss[2];
    for (int k = 0; k < 2; k++) {
      Model& model = k ? p.cuda : p.cpu;
      AdamW& opt = k ? opt_cuda : opt_cpu;
      model.zero_grad();
      model.forward(x.data(), B, T);
      loss[k] = model.loss(y.data(), 1.0f / BT);
      model.backward();
      const float norm = std::sqrt(norm_squared(model.backend(), model.grads(), model.table().total()));
      opt.step(model.params(), model.grads(), 1e-3f, clip_scale(norm, 1.0f));
      if (bf16) model.refresh_bf16(11, uint64_t(s + 1));
    }
    EXPECT_LE(std::fabs(loss[1] - loss[0]), tol * std::fabs(loss[0])) << name << " step " << s;
  }
}

TEST(ModelCuda, LayoutKernelsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const Backend& cpu = cpu_backend();
  const Backend& gpu = backend_for(Backend::Device::cuda);
  const int B = 2, T = 5, NH = 3, hs = 4, ld = 3 * NH * hs;
  std::mt19937 rng(1);
  std::normal_distribution<float> dist;
  auto randn = [&](size_t n) {
    std::vector<float> v(n);
    for (float& e : v) e = dist(rng);
    return v;
  };
  const size_t rows = size_t(B) * T, heads = size_t(B) * NH * T * hs;
  const auto qkv = randn(rows * ld), h = randn(heads), bias = randn(size_t(ld));
  // each op on both backends from the same inputs; out starts as `init`
  auto both = [&](const std::vector<float>& init, const std::vector<float>& inp, auto op, const char* what) {
    std::vector<float> want = init;
    op(cpu, want.data(), inp.data());
    DeviceBuffer out(gpu, init.size()), in(gpu, inp.size());
    gpu.from_host(out.data(), init.data(), init.size() * sizeof(float));
    gpu.from_host(in.data(), inp.data(), inp.size() * sizeof(float));
    op(gpu, out.data(), in.data());
    const auto got = to_host(gpu, out.data(), init.size());
    expect_close_to_max(got.data(), want.data(), want.size(), 1e-6f, what);
  };
  both(std::vector<float>(heads), qkv, [&](const Backend& be, float* o, const float* i) {
    be.split_heads(o, i + hs, B, T, NH, hs, ld);
  }, "split_heads");
  for (int acc : {0, 1})
    both(qkv, h, [&](const Backend& be, float* o, const float* i) {
      be.merge_heads(o + NH * hs, i, B, T, NH, hs, ld, acc);
    }, "merge_heads");
  both(qkv, qkv, [&](const Backend& be, float* o, const float* i) {
    be.axpby_rows(o + 2 * NH * hs, i, 0.5f, 0.5f, rows, NH * hs, size_t(ld), size_t(ld));
  }, "axpby_rows strided");
  both(qkv, bias, [&](const Backend& be, float* o, const float* i) {
    be.axpby_rows(o, i, 1.0f, 1.0f, rows, ld, size_t(ld), 0);
  }, "axpby_rows broadcast");
  both(qkv, qkv, [&](const Backend& be, float* o, const float* i) {
    be.axpby_rows(o, i, 0.0f, 0.25f, rows, ld, size_t(ld), size_t(ld));
  }, "axpby_rows scale");
}

TEST(ModelCuda, Gpt2Fp32) {
  SKIP_WITHOUT_GPU();
  compare_step(gpt2(), false, "gpt2 fp32");
}

TEST(ModelCuda, HybridFp32) {
  SKIP_WITHOUT_GPU();
  compare_step(hybrid(), false, "hybrid fp32");
}

TEST(ModelCuda, Gpt2Bf16) {
  SKIP_WITHOUT_GPU();
  compare_step(gpt2(), true, "gpt2 bf16");
}

TEST(ModelCuda, HybridBf16) {
  SKIP_WITHOUT_GPU();
  compare_step(hybrid(), true, "hybrid bf16");
}

TEST(ModelCuda, FiveAdamWStepsFp32) {
  SKIP_WITHOUT_GPU();
  compare_adamw(gpt2(), false, "gpt2 fp32");
  compare_adamw(hybrid(), false, "hybrid fp32");
}

TEST(ModelCuda, FiveAdamWStepsBf16) {
  SKIP_WITHOUT_GPU();
  compare_adamw(gpt2(), true, "gpt2 bf16");
  compare_adamw(hybrid(), true, "hybrid bf16");
}

// Decode on cuda (the shared blocks, attention_decode's and KVM decode's CUDA twins) against the
// same decode on cpu, token by token, twice (a second sequence after reset_decode starts clean).
TEST(ModelCuda, DecodeMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (const auto& [m, name] : {std::pair{gpt2(), "gpt2 decode"}, std::pair{hybrid(), "hybrid decode"}}) {
    const int T = 19, Vp = m.padded_vocab_size;
    Pair p(m, 1, T, false);
    const auto x = tokens(size_t(T), m.vocab_size, 12);
    for (int rep = 0; rep < 2; rep++) {
      p.cpu.reset_decode();
      p.cuda.reset_decode();
      for (int t = 0; t < T; t++) {
        const float* cpu_logits = p.cpu.step(x[t]);
        const std::vector<float> want(cpu_logits, cpu_logits + Vp);
        const float* got = p.cuda.step(x[t]);  // host memory: step copies the device's logits back
        expect_close_to_max(got, want.data(), size_t(m.vocab_size), 1e-4f,
                            std::string(name) + " position " + std::to_string(t));
      }
    }
  }
}

}  // namespace
