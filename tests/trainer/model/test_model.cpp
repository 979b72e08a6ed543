// The generalised model: block recompute gives the same gradients, decode (step) reproduces the
// full forward's logits for every mixer, and the parameter layout follows docs/checkpoint-format.md.
// Tolerances: recompute, bitwise equal (the same kernels run on the same inputs); decode,
// max|step - forward| <= 1e-5 * max|forward| per position (fp32, summation order differs).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>
#include <utility>
#include <vector>

#include "tests/trainer/model/small_models.h"
#include "trainer/model/model.h"
#include "common/rng.h"

namespace {

using config::Mixer;
using config::Pos;

config::ModelConfig small(std::vector<Mixer> mixers) {
  config::ModelConfig m;
  m.vocab_size = 100, m.padded_vocab_size = 128, m.n_layer = 3, m.n_head = 2, m.d_model = 32, m.max_seq_len = 64;
  m.pos = Pos::rope, m.rope_dims = 8, m.swa_rope_dims = 16;
  m.mlp = config::Mlp::relu2, m.qk_norm = true, m.emb_norm = true;
  m.tie_embeddings = false, m.bias = false, m.token_shift = true, m.value_residual = true, m.residual_scale = 0.5;
  m.mixers = std::move(mixers), m.swa_window = 6;
  m.kvm.chunk = 4, m.kvm.window_chunks = 2, m.kvm.sink = 1, m.kvm.budget = config::KvmBudget::power_law;
  m.kvm.min_len = 4, m.kvm.power_f = 2, m.kvm.power_e = 0.5;
  return m;
}

using test_models::perturb;
using test_models::tokens;

// Model::init's normals, spread over threads by jumping splitmix64 ahead, are the sequential draws
// bit for bit, and leave the generator where the sequential draws would (the next tensor's start).
TEST(Rng, FillNormalOnThreadsEqualsSequentialDraws) {
  const size_t n = 1001;
  Rng sequential(99), threaded(99);
  std::vector<float> want(n), got(n, NAN);
  for (float& x : want) x = float(sequential.normal()) * 0.02f;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(3);
  fill_normal(got.data(), n, 0.02f, threaded);
  omp_set_num_threads(threads);
  for (size_t i = 0; i < n; i++) ASSERT_EQ(got[i], want[i]) << i;
  EXPECT_EQ(threaded.state(), sequential.state());
  EXPECT_EQ(threaded.next_u64(), sequential.next_u64());
}

TEST(Model, BlockRecomputeGivesIdenticalGradients) {
  for (auto mixers : std::vector<std::vector<Mixer>>{{Mixer::swa, Mixer::attn}, {Mixer::kvm, Mixer::swa}}) {
    auto m = small(mixers);
    const int B = 2, T = 19;
    Model a(m, B, T, false), b(m, B, T, true);
    perturb(a, 3);
    std::copy(a.params(), a.params() + a.table().total(), b.params());
    EXPECT_LT(b.activation_bytes(), a.activation_bytes());
    auto x = tokens(size_t(B) * T, m.vocab_size, 5), y = tokens(size_t(B) * T, m.vocab_size, 6);
    for (Model* model : {&a, &b}) {
      model->zero_grad();
      model->forward(x.data(), B, T);
      model->loss(y.data(), 1.0f / (B * T));
      model->backward();
    }
    for (const auto& v : a.table().views())
      for (size_t i = 0; i < v.size; i++)
        ASSERT_EQ(a.grads()[v.offset + i], b.grads()[v.offset + i])
            << config::to_string(mixers[0]) << ": " << v.name << "[" << i << "]";
  }
}

// zero_grad() only marks the gradients stale; the next backward must write every one of them
// (linear layers through GEMMs that overwrite, the rest zeroed before use) and later backwards add.
// Reference: the same model with no zero_grad, accumulating onto the allocation's zeros. The
// gradients start as NaN, so anything stale that survived would show.
TEST(Model, ZeroGradMakesTheNextBackwardOverwriteEveryGradient) {
  for (const auto& [name, m] : {std::pair{"gpt2 (tied head, biases)", test_models::gpt2()},
                                std::pair{"hybrid (untied, kvm)", test_models::hybrid()}}) {
    SCOPED_TRACE(name);
    const int B = 2, T = 19;
    Model ref(m, B, T), model(m, B, T);
    perturb(ref, 7);
    std::copy(ref.params(), ref.params() + ref.table().total(), model.params());
    const auto x1 = tokens(size_t(B) * T, m.vocab_size, 8), y1 = tokens(size_t(B) * T, m.vocab_size, 9);
    const auto x2 = tokens(size_t(B) * T, m.vocab_size, 10), y2 = tokens(size_t(B) * T, m.vocab_size, 11);
    auto pass = [&](Model& mod, const std::vector<int>& x, const std::vector<int>& y) {
      mod.forward(x.data(), B, T);
      mod.loss(y.data(), 1.0f / (B * T));
      mod.backward();
    };
    auto expect_grads = [&](const char* what) {
      for (const auto& v : ref.table().views()) {
        float scale = 0;
        for (size_t i = 0; i < v.size; i++) scale = std::max(scale, std::fabs(ref.grads()[v.offset + i]));
        for (size_t i = 0; i < v.size; i++)
          ASSERT_NEAR(model.grads()[v.offset + i], ref.grads()[v.offset + i], 1e-6f * scale + 1e-30f)
              << what << ": " << v.name << "[" << i << "]";
      }
    };
    std::fill(model.grads(), model.grads() + model.table().total(), NAN);
    model.zero_grad();
    pass(model, x1, y1);
    pass(ref, x1, y1);
    expect_grads("one backward after zero_grad");
    pass(model, x2, y2);  // a second micro-step adds
    pass(ref, x2, y2);
    expect_grads("two accumulated backwards");
  }
}

struct DecodeCase {
  const char* name;
  std::function<config::ModelConfig()> make;
};

class Decode : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(Decode, StepReproducesForwardLogits) {
  const auto m = GetParam().make();
  const int T = 23;  // KVM: chunks of 4, a partial last chunk, several state updates
  Model model(m, 1, T);
  perturb(model, 9);
  auto x = tokens(T, m.vocab_size, 10);
  model.forward(x.data(), 1, T);
  const int Vp = m.padded_vocab_size;
  std::vector<float> full(model.logits(), model.logits() + size_t(T) * Vp);
  for (int rep = 0; rep < 2; rep++) {  // a second sequence after reset_decode starts clean
    model.reset_decode();
    for (int t = 0; t < T; t++) {
      const float* got = model.step(x[t]);
      float max_ref = 0, max_diff = 0;
      for (int i = 0; i < Vp; i++) {
        max_ref = std::max(max_ref, std::fabs(full[size_t(t) * Vp + i]));
        max_diff = std::max(max_diff, std::fabs(got[i] - full[size_t(t) * Vp + i]));
      }
      ASSERT_LE(max_diff, 1e-5f * max_ref) << "position " << t << " (max |logit| " << max_ref << ")";
    }
  }
}

config::ModelConfig with_pos(std::vector<Mixer> mixers, Pos pos) {
  auto m = small(std::move(mixers));
  m.pos = pos;
  return m;
}

INSTANTIATE_TEST_SUITE_P(
    Mixers, Decode,
    ::testing::Values(DecodeCase{"attn", [] { return with_pos({Mixer::attn}, Pos::rope); }},
                      DecodeCase{"swa", [] { return with_pos({Mixer::swa}, Pos::rope); }},
                      DecodeCase{"kvm", [] { return with_pos({Mixer::kvm}, Pos::rope); }},
                      DecodeCase{"hybrid", [] { return with_pos({Mixer::swa, Mixer::kvm, Mixer::attn}, Pos::rope); }},
                      DecodeCase{"learned_pos", [] { return with_pos({Mixer::attn, Mixer::swa}, Pos::learned); }},
                      // the paper's switches, each kind of mixer
                      DecodeCase{"paper_attn", [] { return test_models::paper({Mixer::attn}); }},
                      DecodeCase{"paper_swa_kvm", [] { return test_models::paper({Mixer::swa, Mixer::kvm}); }},
                      DecodeCase{"paper_bswa", [] {
                                   auto m = test_models::paper({Mixer::bswa});
                                   m.kvm.window_chunks = 3, m.kvm.sink = 0;
                                   return m;
                                 }},
                      DecodeCase{"paper_nope_swa", [] {
                                   auto m = test_models::paper({Mixer::swa, Mixer::attn});
                                   m.pos = Pos::none;
                                   return m;
                                 }},
                      DecodeCase{"paper_gqa", [] {
                                   auto m = test_models::paper({Mixer::swa, Mixer::kvm, Mixer::attn});
                                   m.n_head = 4, m.n_kv_head = 2;
                                   return m;
                                 }},
                      DecodeCase{"paper_linear_layer0", [] {
                                   auto m = test_models::paper({Mixer::swa, Mixer::kvm});
                                   m.value_residual_mode = config::ValueResidualMode::linear;
                                   m.value_residual_anchor = config::ValueResidualAnchor::layer0;
                                   return m;
                                 }}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(Model, ParameterNames) {
  auto m = small({Mixer::kvm, Mixer::swa});
  Model model(m, 1, 8);
  for (const char* name : {"wte", "ln_e.weight", "h.0.ln_1.weight", "h.0.attn.shift", "h.0.attn.qkv.weight",
                           "h.0.attn.ln_q.weight", "h.0.attn.ln_k.bias", "h.0.kvm.ln_s.weight", "h.0.kvm.ln_s.bias",
                           "h.0.kvm.gate.weight", "h.0.kvm.tau_front", "h.0.kvm.tau_state", "h.0.attn.proj.weight",
                           "h.0.ln_2.bias", "h.0.mlp.shift", "h.0.mlp.fc.weight", "h.0.mlp.proj.weight",
                           "ln_f.weight", "lm_head.weight"})
    EXPECT_NO_THROW(model.table().at(name)) << name;
  EXPECT_THROW(model.table().at("wpe"), std::runtime_error);           // RoPE: no position table
  EXPECT_THROW(model.table().at("h.0.attn.qkv.bias"), std::runtime_error);  // model.bias false
  EXPECT_THROW(model.table().at("h.1.kvm.gate.weight"), std::runtime_error);  // layer 1 is swa
}

// MFU's FLOPs: 6N + 3 x attention per token, N as llm.c's fill_in_parameter_sizes counts GPT-2's
// parameters (the padded vocabulary, wpe, biases and norms, the tied head once); an untied head
// costs the same products, its input embedding being a lookup.
TEST(Model, FlopsPerTokenAreTwoPerParameterPlusCausalAttention) {
  auto m = test_models::gpt2(64);
  const double C = m.d_model, L = m.n_layer, Vp = m.padded_vocab_size, maxT = m.max_seq_len;
  const double llmc_params = Vp * C + maxT * C +
                             L * (2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + 4 * C * C + 4 * C + 4 * C * C + C) +
                             2 * C;
  const int T = 48;
  const double attention = L * 2 * 2 * C * (T + 1) / 2.0;  // causal: a query sees (T+1)/2 keys on average
  Model tied(m, 1, T);
  EXPECT_EQ(tied.num_params(), size_t(llmc_params));
  EXPECT_DOUBLE_EQ(tied.flops_per_token(T), 2 * llmc_params + attention);
  m.tie_embeddings = false;
  Model untied(m, 1, T);
  EXPECT_EQ(untied.num_params(), size_t(llmc_params + Vp * C));
  EXPECT_DOUBLE_EQ(untied.flops_per_token(T), tied.flops_per_token(T));
}

TEST(Model, PaperInitZeroesOutputProjections) {
  auto m = small({Mixer::kvm, Mixer::swa});
  m.zero_init_out = true;
  Model model(m, 1, 8);
  model.init(1);
  for (const char* name : {"h.0.attn.proj.weight", "h.1.mlp.proj.weight"}) {
    const auto& v = model.table().at(name);
    for (size_t i = 0; i < v.size; i++) ASSERT_EQ(model.params()[v.offset + i], 0.0f) << name;
  }
  const auto& tau = model.table().at("h.0.kvm.tau_state");
  EXPECT_EQ(model.params()[tau.offset], 1.0f);
  const auto& g = model.table().at("h.0.kvm.gate.weight");
  float mx = 0;
  for (size_t i = 0; i < g.size; i++) mx = std::max(mx, std::fabs(model.params()[g.offset + i]));
  EXPECT_GT(mx, 0.0f);
  EXPECT_LE(mx, 1.0f / std::sqrt(float(m.d_model)));
}

// The declared layout (trainer/model/layout.cpp) against what each kind of tensor must be, told here by
// its checkpoint name as docs/checkpoint-format.md defines them: every tensor once, matrices and
// embeddings decayed and nothing else, and each starting as GPT-2 / RWKV / PyTorch start it.
TEST(ModelLayout, EveryTensorIsDeclaredOnceAndStartsByItsRule) {
  auto m = test_models::hybrid();
  m.bias = true;
  Model model(m, 1, 8);
  model.init(3);
  const int C = m.d_model, L = m.n_layer;
  std::set<std::string> names;
  auto stddev = [](const float* x, size_t n) {
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) s += x[i], s2 += double(x[i]) * x[i];
    return std::sqrt(s2 / n - (s / n) * (s / n));
  };
  for (const auto& v : model.table().views()) {
    SCOPED_TRACE(v.name);
    EXPECT_TRUE(names.insert(v.name).second);
    EXPECT_EQ(v.decay, v.shape.size() == 2);
    const float* x = model.params() + v.offset;
    const std::string& n = v.name;
    if (n.find("ln_") != std::string::npos || n.ends_with("tau_front") || n.ends_with("tau_state")) {
      for (size_t i = 0; i < v.size; i++) ASSERT_EQ(x[i], n.ends_with(".bias") ? 0.0f : 1.0f);
    } else if (n.ends_with(".bias")) {
      for (size_t i = 0; i < v.size; i++) ASSERT_EQ(x[i], 0.0f);
    } else if (n.ends_with(".shift")) {
      const int l = n[2] - '0';
      for (int c = 0; c < C; c++) ASSERT_FLOAT_EQ(x[c], float(std::pow(double(c) / C, 1.0 - double(l) / L)));
    } else if (n.ends_with("kvm.gate.weight")) {
      for (size_t i = 0; i < v.size; i++) ASSERT_LE(std::fabs(x[i]), 1.0f / std::sqrt(float(C)));
      EXPECT_GT(stddev(x, v.size), 0.5 / std::sqrt(3.0 * C));  // U(-b, b) has deviation b/sqrt(3)
    } else if (n == "wte" || n == "lm_head.weight") {
      const size_t real = size_t(m.vocab_size) * C;
      for (size_t i = real; i < v.size; i++) ASSERT_EQ(x[i], 0.0f);  // padded rows: no token selects them
      EXPECT_NEAR(stddev(x, real), 0.02, 0.002);
    } else if (n.ends_with("proj.weight")) {
      EXPECT_NEAR(stddev(x, v.size), 0.02 / std::sqrt(2.0 * L), 0.003);
    } else {
      ASSERT_TRUE(n.ends_with("qkv.weight") || n.ends_with("fc.weight")) << "a tensor this test does not know";
      EXPECT_NEAR(stddev(x, v.size), 0.02, 0.003);
    }
  }
}

}  // namespace

namespace {

// W (rows x cols) has orthonormal rows (rows <= cols) or columns, times gain: max deviation of the
// Gram matrix of the shorter side from gain^2 I.
double orthogonality_error(const float* w, int rows, int cols, double gain) {
  const bool by_rows = rows <= cols;
  const int n = by_rows ? rows : cols, len = by_rows ? cols : rows;
  auto at = [&](int i, int k) { return double(by_rows ? w[size_t(i) * cols + k] : w[size_t(k) * cols + i]); };
  double err = 0;
  for (int i = 0; i < n; i++)
    for (int j = 0; j <= i; j++) {
      double dot = 0;
      for (int k = 0; k < len; k++) dot += at(i, k) * at(j, k);
      err = std::max(err, std::fabs(dot - (i == j ? gain * gain : 0.0)));
    }
  return err;
}

}  // namespace

// model.init: paper starts every tensor as the paper's code does (docs/paper-mapping.md), and
// model.mup_base_dim gives the paper's optimizer groups their muP ratios.
TEST(ModelLayout, PaperInitAndMupFollowThePapersRules) {
  auto m = test_models::paper({Mixer::swa, Mixer::kvm});
  m.d_model = 64;  // the MLP's fc (4C x C) and the head (Vp x C) both taller than wide
  Model model(m, 1, 8);
  model.init(5);
  const int C = m.d_model, L = m.n_layer, Vp = m.padded_vocab_size, rank = value_gate_rank(C);
  const float wide = float(C) / float(m.mup_base_dim);
  auto max_abs = [](const float* x, size_t n) {
    float mx = 0;
    for (size_t i = 0; i < n; i++) mx = std::max(mx, std::fabs(x[i]));
    return mx;
  };
  for (const auto& v : model.table().views()) {
    SCOPED_TRACE(v.name);
    const float* x = model.params() + v.offset;
    const std::string& n = v.name;
    const int l = n.starts_with("h.") ? n[2] - '0' : -1;
    const double r = 1.0 - double(l) / L;
    float mup = 1.0f;
    if (n == "wte") {
      EXPECT_LE(max_abs(x, v.size), 1e-4f);
      EXPECT_GT(max_abs(x + size_t(m.vocab_size) * C, v.size - size_t(m.vocab_size) * C), 0.0f);  // padded rows too
    } else if (n == "lm_head.weight") {
      EXPECT_LT(orthogonality_error(x, Vp, C, 0.5 * std::sqrt(double(Vp) / C)), 1e-4);
      mup = wide;
    } else if (n.ends_with("mlp.fc.weight")) {
      EXPECT_LT(orthogonality_error(x, 4 * C, C, 1.0), 1e-5);
      mup = wide;
    } else if (n.ends_with("attn.qkv.weight") || n.ends_with("kvm.gate.weight")) {
      EXPECT_LE(max_abs(x, v.size), 1.0f / std::sqrt(float(C)));
      EXPECT_GT(max_abs(x, v.size), 0.5f / std::sqrt(float(C)));
      mup = wide;
    } else if (n.ends_with("proj.weight") || n.ends_with("vres.gate_down")) {
      EXPECT_EQ(max_abs(x, v.size), 0.0f);
      mup = wide;
    } else if (n.ends_with("vres.gate_up")) {
      EXPECT_LT(orthogonality_error(x, C, rank, 0.1), 1e-6);
      mup = float(rank) / float(value_gate_rank(m.mup_base_dim));
    } else if (n.ends_with("vres.gate_bias")) {
      for (int c = 0; c < C; c++) ASSERT_FLOAT_EQ(x[c], float(0.73 - 0.4 * (double(c) / (C - 1) - 0.5)));
    } else if (n.ends_with("attn.qkv_shift")) {
      const double a[3] = {0.2, 0.7, 0.7};
      for (int j = 0; j < 3; j++)
        for (int c = 0; c < C; c++)
          ASSERT_FLOAT_EQ(x[j * C + c], float(1.0 - std::pow(double(c) / C, a[j] * r))) << j << " " << c;
    } else if (n.ends_with("mlp.shift_delta")) {
      for (int c = 0; c < C; c++) ASSERT_FLOAT_EQ(x[c], float(1.0 - std::pow(double(c) / C, std::pow(r, 4))));
    } else {
      ASSERT_TRUE(n.find("ln_") != std::string::npos || n.ends_with("tau_front") || n.ends_with("tau_state"))
          << "a tensor this test does not know";
      for (size_t i = 0; i < v.size; i++) ASSERT_EQ(x[i], n.ends_with(".bias") ? 0.0f : 1.0f);
    }
    EXPECT_EQ(v.mup_ratio, mup);
  }
}
