// The backbone's CPU kernels (rope, relu2, token shift, head LayerNorm, elu gate, scaled residual)
// against naive double-precision references (references.h), as tests/kernels/test_kernels.cpp:
// (a) forward vs the reference, (b) backward vs central differences of the reference of a random
// linear functional L = sum_k w_k out_k (dout = w), (c) gradients accumulate onto random g0.
// Tolerances: forward |got - ref| <= 2e-5 (1 + |ref|); backward |got - g0 - fd| <= 2e-4 (1 + |fd|).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "kernels/kernels.h"
#include "tests/kernels/references.h"
#include "tests/test_util.h"

namespace cpu = kernels::cpu;
using Vec = std::vector<float>;
using DVec = std::vector<double>;

namespace {

using test_util::dot;
using test_util::randn;
using test_util::ref_head_ln;
using test_util::ref_rope;
using test_util::ref_shift;
using test_util::to_double;

constexpr double kFwdTol = 2e-5;
constexpr double kGradTol = 2e-4;

// (b) and (c): a kernel's gradient against central differences of the double reference
void expect_grad(const Vec& got, const Vec& g0, DVec& x, const std::function<double()>& loss, const char* what,
                 size_t samples = SIZE_MAX) {
  test_util::expect_fd_grad(got, g0, x, loss, kGradTol, what, samples);
}

// ---- tests ----

// Both variants; R = 6 gives the paper's frequencies 1, 1/10 and 1/100 at base 100.
class Rope : public ::testing::TestWithParam<kernels::RopeVariant> {};

TEST_P(Rope, ForwardBackward) {
  const kernels::RopeVariant variant = GetParam();
  const bool paper = variant == kernels::RopeVariant::paper;
  const int B = 2, T = 5, NH = 3, hs = 8, ld = 3 * NH * hs, R = 6, pos0 = 7;
  const float base = 100.0f;
  const size_t n = (size_t)B * T * ld;
  Vec x = randn(n, 1), out(n);
  cpu::rope_forward(out.data(), x.data(), B, T, NH, hs, ld, R, base, pos0, variant);
  DVec xd = to_double(x);
  auto ref = ref_rope(xd, B, T, NH, hs, ld, R, base, pos0, paper);
  for (int b = 0; b < B; b++)  // only the first NH*hs of each row is a q; the rest is untouched here
    for (int t = 0; t < T; t++)
      for (int c = 0; c < NH * hs; c++) {
        size_t o = ((size_t)b * T + t) * ld + c;
        ASSERT_NEAR(out[o], ref[o], kFwdTol * (1 + std::abs(ref[o]))) << o;
      }
  // in place gives the same
  Vec y = x;
  cpu::rope_forward(y.data(), y.data(), B, T, NH, hs, ld, R, base, pos0, variant);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      for (int c = 0; c < NH * hs; c++) ASSERT_EQ(y[((size_t)b * T + t) * ld + c], out[((size_t)b * T + t) * ld + c]);
  // backward on the q columns (the other columns take no part)
  Vec w = randn(n, 2), g0 = randn(n, 3), dx = g0;
  for (int r = 0; r < B * T; r++)
    for (int c = NH * hs; c < ld; c++) w[(size_t)r * ld + c] = 0, g0[(size_t)r * ld + c] = dx[(size_t)r * ld + c] = 0;
  cpu::rope_backward(dx.data(), w.data(), B, T, NH, hs, ld, R, base, pos0, variant);
  for (int r = 0; r < B * T; r++)
    for (int c = NH * hs; c < ld; c++) ASSERT_EQ(dx[(size_t)r * ld + c], 0.0f);
  expect_grad(dx, g0, xd, [&] { return dot(ref_rope(xd, B, T, NH, hs, ld, R, base, pos0, paper), w); },
              "rope dinp");
}

INSTANTIATE_TEST_SUITE_P(Variants, Rope,
                         ::testing::Values(kernels::RopeVariant::kvmtrain, kernels::RopeVariant::paper),
                         [](const auto& info) {
                           return info.param == kernels::RopeVariant::paper ? "paper" : "kvmtrain";
                         });

// The paper's frequencies for a single pair (R = 2): frequency 1, not 0/0
TEST(RopePaper, OnePair) {
  const int B = 1, T = 4, NH = 2, hs = 4, ld = NH * hs, R = 2, pos0 = 3;
  const float base = 10000.0f;
  Vec x = randn((size_t)B * T * ld, 4), out(x.size());
  cpu::rope_forward(out.data(), x.data(), B, T, NH, hs, ld, R, base, pos0, kernels::RopeVariant::paper);
  const DVec ref = ref_rope(to_double(x), B, T, NH, hs, ld, R, base, pos0, true);
  for (size_t i = 0; i < out.size(); i++) ASSERT_NEAR(out[i], ref[i], kFwdTol * (1 + std::abs(ref[i]))) << i;
}

TEST(Relu2, ForwardBackward) {
  const int N = 200;
  Vec x = randn(N, 4), out(N);
  for (auto& v : x)
    if (std::abs(v) < 1e-3f) v = 0.5f;  // keep finite differences away from the kink
  cpu::relu2_forward(out.data(), x.data(), N);
  DVec xd = to_double(x);
  auto ref = [&] {
    DVec o(N);
    for (int i = 0; i < N; i++) o[i] = xd[i] > 0 ? xd[i] * xd[i] : 0.0;
    return o;
  };
  test_util::expect_close(out, ref(), kFwdTol, "relu2 out");
  Vec w = randn(N, 5), g0(N, 0.0f), dx(N, NAN);  // dinp is written, never read
  cpu::relu2_backward(dx.data(), x.data(), w.data(), N);
  Vec in_place = w;
  cpu::relu2_backward(in_place.data(), x.data(), in_place.data(), N);
  test_util::expect_close(in_place, dx, 0.0, "relu2 dinp in place");
  expect_grad(dx, g0, xd, [&] { return dot(ref(), w); }, "relu2 dinp");
}

TEST(EluGate, ForwardBackward) {
  const int N = 100;
  Vec x = randn(N, 7), out(N);
  for (auto& v : x)
    if (std::abs(v) < 1e-3f) v = 0.5f;
  cpu::elu_gate_forward(out.data(), x.data(), N);
  DVec xd = to_double(x);
  auto ref = [&] {
    DVec o(N);
    for (int i = 0; i < N; i++) o[i] = 1.0 + (xd[i] > 0 ? xd[i] : std::exp(xd[i]) - 1.0);
    return o;
  };
  test_util::expect_close(out, ref(), kFwdTol, "elu gate out");
  for (float v : out) ASSERT_GT(v, 0.0f);
  Vec w = randn(N, 8), g0 = randn(N, 9), dx = g0;
  cpu::elu_gate_backward(dx.data(), x.data(), w.data(), N);
  expect_grad(dx, g0, xd, [&] { return dot(ref(), w); }, "elu gate dinp");
}

TEST(ScaledResidual, Forward) {
  const int N = 50;
  const float s = 0.5f;
  Vec a = randn(N, 10), b = randn(N, 11), out(N);
  cpu::scaled_residual_forward(out.data(), a.data(), b.data(), s, N);
  DVec ad = to_double(a), bd = to_double(b);
  auto ref = [&] {
    DVec o(N);
    for (int i = 0; i < N; i++) o[i] = ad[i] + s * bd[i];
    return o;
  };
  test_util::expect_close(out, ref(), kFwdTol, "scaled residual out");
}

TEST(TokenShift, ForwardBackward) {
  const int B = 2, T = 4, C = 6;
  constexpr auto kMix = kernels::TokenShiftForm::mix_zero;  // the other forms: the kernel test table
  const size_t n = (size_t)B * T * C;
  Vec x = randn(n, 15), mix = randn(C, 16), prev = randn((size_t)B * C, 17), out(n);
  DVec xd = to_double(x), md = to_double(mix), pd = to_double(prev);
  cpu::token_shift_forward(out.data(), x.data(), nullptr, mix.data(), B, T, C, kMix);
  test_util::expect_close(out, ref_shift(xd, nullptr, md, B, T, C, kMix), kFwdTol, "shift out");
  cpu::token_shift_forward(out.data(), x.data(), prev.data(), mix.data(), B, T, C, kMix);
  test_util::expect_close(out, ref_shift(xd, &pd, md, B, T, C, kMix), kFwdTol, "shift out (prev)");
  Vec w = randn(n, 18), g0 = randn(n, 19), g0m = randn(C, 20), dx = g0, dm = g0m;
  cpu::token_shift_backward(dx.data(), dm.data(), w.data(), x.data(), mix.data(), B, T, C, kMix);
  auto L = [&] { return dot(ref_shift(xd, nullptr, md, B, T, C, kMix), w); };
  expect_grad(dx, g0, xd, L, "shift dinp");
  expect_grad(dm, g0m, md, L, "shift dmix");
}

TEST(HeadLayerNorm, ForwardBackward) {
  const int N = 5, NH = 3, hs = 8, ld = 3 * NH * hs;
  const size_t n = (size_t)N * ld;
  Vec x = randn(n, 21, 2.0f), wt = randn(hs, 22), bs = randn(hs, 23), out(n, 0.0f), mean(N * NH), rstd(N * NH);
  for (auto& v : x) v += 0.7f;
  cpu::head_layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), wt.data(), bs.data(), N, NH, hs, ld);
  DVec xd = to_double(x), wd = to_double(wt), bd = to_double(bs);
  auto ref = ref_head_ln(xd, wd, bd, N, NH, hs, ld);
  for (int r = 0; r < N; r++)
    for (int c = 0; c < NH * hs; c++) {
      size_t o = (size_t)r * ld + c;
      ASSERT_NEAR(out[o], ref[o], kFwdTol * (1 + std::abs(ref[o]))) << o;
    }
  Vec w = randn(n, 24), g0 = randn(n, 25), g0w = randn(hs, 26), g0b = randn(hs, 27);
  for (int r = 0; r < N; r++)
    for (int c = NH * hs; c < ld; c++) w[(size_t)r * ld + c] = 0, g0[(size_t)r * ld + c] = 0;
  Vec dx = g0, dw = g0w, db = g0b;
  cpu::head_layernorm_backward(dx.data(), dw.data(), db.data(), w.data(), x.data(), wt.data(), mean.data(),
                               rstd.data(), N, NH, hs, ld);
  auto L = [&] { return dot(ref_head_ln(xd, wd, bd, N, NH, hs, ld), w); };
  expect_grad(dx, g0, xd, L, "head ln dinp");
  expect_grad(dw, g0w, wd, L, "head ln dweight");
  expect_grad(db, g0b, bd, L, "head ln dbias");
}

}  // namespace
