// The CUDA kernels against their CPU twins (themselves checked against references in
// test_kernels.cpp and test_backbone_kernels.cpp) on the same random inputs, forward and backward,
// backward accumulating onto random gradients. Skipped, with a message, where no CUDA device is
// present (ctest counts them as skipped through SKIP_REGULAR_EXPRESSION).
// Tolerances, all |cuda - cpu| <= tol * (1 + |cpu|):
//  - exact (0): encoder forward (whole vocabulary and a shard), relu2 forward, the cross-entropy
//    shard maxima;
//    bf16_round_stochastic is compared bit for bit with kernels/bf16.h's host functions;
//  - 1e-6: relu2 backward, rope (FMA contraction; cos/sin in double, then rounded), adamw after
//    three steps (2e-6), global_norm_squared (both accumulate in double), scaled_residual forward,
//    token_shift forward and dinp (FMA contraction), elu_gate forward (expf within 2 ulp
//    of glibc's exp, on values <= 1);
//  - 1e-5: GELU (the two tanh differ by ~2e-7), elu_gate backward (that expf error times dout),
//    encoder backward (atomicAdd order), layernorm and head_layernorm forward, cross-entropy (expf
//    against the CPU's polynomial exp, ~2 ulp) and its vocabulary-shard phases (expf against
//    std::exp, sums in another order);
//  - 1e-4: sums of hundreds of terms in another order: layernorm and head_layernorm backward,
//    token_shift dmix, matmul forward and backward (cuBLASLt fp32 without TF32), the bf16 matmuls
//    (the same bf16-rounded operands, fp32 accumulation), the matmul with the GELU epilogue (pre
//    and out), attention forward and backward.
#include <gtest/gtest.h>

#include "tests/cuda_test_util.h"
#include "tests/test_util.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <random>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/kernels.h"

namespace {

using Vec = std::vector<float>;

Vec randn(size_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  Vec v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

using test_util::DeviceBuf;
using test_util::DeviceInts;
using test_util::DeviceVec;
using DeviceBf16 = DeviceBuf<kernels::bf16>;

// The bf16 copy of a weight (nearest even; the trainer's copy is rounded stochastically).
std::vector<kernels::bf16> to_bf16(const Vec& v) {
  std::vector<kernels::bf16> h(v.size());
  for (size_t i = 0; i < v.size(); i++) h[i] = kernels::bf16_round_nearest(v[i]);
  return h;
}

std::vector<int> randint(size_t n, int hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(0, hi - 1);
  std::vector<int> v(n);
  for (int& x : v) x = dist(rng);
  return v;
}

using test_util::expect_close;

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount found none";
  }
  static constexpr int N = 100003;  // not a multiple of the block size
};

// An elementwise activation (out = f(x), and dinp from x and dout) against its CPU twin; g0 is
// dinp's start: NaN where the backward writes dinp, values where it adds to them.
struct Activation {
  void (*forward)(float* out, const float* inp, int N);
  void (*backward)(float* dinp, const float* inp, const float* dout, int N);
};
void expect_activation_matches_cpu(Activation cpu, Activation cuda, const Vec& x, const Vec& dout, const Vec& g0,
                                   double out_tol, double dinp_tol) {
  const int n = int(x.size());
  Vec out(n), dinp = g0;
  cpu.forward(out.data(), x.data(), n);
  cpu.backward(dinp.data(), x.data(), dout.data(), n);

  DeviceVec x_d(x), dout_d(dout), out_d{Vec(n)}, dinp_d(g0);
  cuda.forward(out_d.get(), x_d.get(), n);
  cuda.backward(dinp_d.get(), x_d.get(), dout_d.get(), n);
  expect_close(out_d.host(), out, out_tol, "out");
  expect_close(dinp_d.host(), dinp, dinp_tol, "dinp");
}

TEST_F(CudaKernels, GeluMatchesCpu) {
  Vec x = randn(N, 6, 3.0f), dout = randn(N, 7), g0(N, NAN);  // dinp is written, never read
  expect_activation_matches_cpu({kernels::cpu::gelu_forward, kernels::cpu::gelu_backward},
                                {kernels::cuda::gelu_forward, kernels::cuda::gelu_backward}, x, dout, g0, 1e-5, 1e-5);
}

TEST_F(CudaKernels, EncoderMatchesCpu) {
  const int B = 3, T = 37, C = 96, Vp = 64, maxT = 50;  // Vp < B*T: tokens repeat
  std::vector<int> tok = randint((size_t)B * T, Vp, 10);
  Vec wpe = randn((size_t)maxT * C, 12), dout = randn((size_t)B * T * C, 13), gwpe = randn((size_t)maxT * C, 15);
  // the whole vocabulary, and the second of two vocabulary shards (the other's tokens: zero rows)
  for (auto [v0, Vl] : {std::pair{0, Vp}, std::pair{Vp / 2, Vp / 2}})
    for (bool with_wpe : {true, false}) {
      SCOPED_TRACE(std::string(with_wpe ? "with wpe" : "without wpe") + ", rows from " + std::to_string(v0));
      Vec wte = randn((size_t)Vl * C, 11), gwte = randn((size_t)Vl * C, 14);
      Vec out((size_t)B * T * C), dwte = gwte, dwpe = gwpe;
      const float* wpe_h = with_wpe ? wpe.data() : nullptr;
      kernels::cpu::encoder_forward(out.data(), tok.data(), wte.data(), wpe_h, B, T, C, v0, Vl);
      kernels::cpu::encoder_backward(dwte.data(), with_wpe ? dwpe.data() : nullptr, dout.data(), tok.data(), B, T, C,
                                     v0, Vl);

      DeviceInts tok_d(tok);
      DeviceVec wte_d(wte), wpe_d(wpe), dout_d(dout), out_d{Vec(out.size(), 9.0f)}, dwte_d(gwte), dwpe_d(gwpe);
      kernels::cuda::encoder_forward(out_d.get(), tok_d.get(), wte_d.get(), with_wpe ? wpe_d.get() : nullptr, B, T, C,
                                     v0, Vl);
      kernels::cuda::encoder_backward(dwte_d.get(), with_wpe ? dwpe_d.get() : nullptr, dout_d.get(), tok_d.get(), B,
                                      T, C, v0, Vl);
      expect_close(out_d.host(), out, 0.0, "out");
      expect_close(dwte_d.host(), dwte, 1e-5, "dwte");
      expect_close(dwpe_d.host(), dwpe, 1e-5, "dwpe");  // untouched without wpe
    }
}

TEST_F(CudaKernels, LayernormMatchesCpu) {
  const int N = 333, C = 200;  // C not a multiple of 32, N not of the rows per block
  Vec x = randn((size_t)N * C, 20, 2.0f), w = randn(C, 21), b = randn(C, 22), dout = randn((size_t)N * C, 23);
  for (float& v : x) v += 3.0f;  // rows away from zero mean
  Vec g_in = randn((size_t)N * C, 24), g_w = randn(C, 25), g_b = randn(C, 26);
  Vec out((size_t)N * C), mean(N), rstd(N), dinp = g_in, dw = g_w, db = g_b;
  kernels::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  kernels::cpu::layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                                   rstd.data(), N, C);

  DeviceVec x_d(x), w_d(w), b_d(b), dout_d(dout), out_d{Vec(out.size())}, mean_d{Vec(N)}, rstd_d{Vec(N)};
  DeviceVec dinp_d(g_in), dw_d(g_w), db_d(g_b);
  kernels::cuda::layernorm_forward(out_d.get(), mean_d.get(), rstd_d.get(), x_d.get(), w_d.get(), b_d.get(), N, C);
  expect_close(out_d.host(), out, 1e-5, "out");
  expect_close(mean_d.host(), mean, 1e-5, "mean");
  expect_close(rstd_d.host(), rstd, 1e-5, "rstd");
  // the backward from the CPU's statistics, so that only the backward is compared
  DeviceVec cmean_d(mean), crstd_d(rstd);
  kernels::cuda::layernorm_backward(dinp_d.get(), dw_d.get(), db_d.get(), dout_d.get(), x_d.get(), w_d.get(),
                                    cmean_d.get(), crstd_d.get(), N, C);
  expect_close(dinp_d.host(), dinp, 1e-4, "dinp");
  expect_close(dw_d.host(), dw, 1e-4, "dweight");
  expect_close(db_d.host(), db, 1e-4, "dbias");
}

TEST_F(CudaKernels, MatmulMatchesCpu) {
  const int N = 150, IC = 96, OC = 130;
  Vec x = randn((size_t)N * IC, 30), w = randn((size_t)OC * IC, 31, 0.1f), bias = randn(OC, 32);
  Vec dout = randn((size_t)N * OC, 33), g_in = randn((size_t)N * IC, 34), g_w = randn((size_t)OC * IC, 35),
      g_b = randn(OC, 36);
  for (bool with_bias : {true, false})
  for (bool accumulate : {true, false}) {
    SCOPED_TRACE(with_bias ? "with bias" : "without bias (and no dinp)");
    SCOPED_TRACE(accumulate ? "accumulate" : "overwrite (device gradients start as NaN)");
    Vec out((size_t)N * OC), dinp = g_in, dw = g_w, db = g_b, nan_in(g_in.size(), NAN), nan_w(g_w.size(), NAN),
        nan_b(g_b.size(), NAN);
    kernels::cpu::matmul_forward(out.data(), x.data(), w.data(), with_bias ? bias.data() : nullptr, N, IC, OC);
    kernels::cpu::matmul_backward(with_bias ? dinp.data() : nullptr, dw.data(), with_bias ? db.data() : nullptr,
                                  dout.data(), x.data(), w.data(), N, IC, OC, accumulate, accumulate);

    DeviceVec x_d(x), w_d(w), b_d(bias), dout_d(dout), out_d{Vec(out.size(), 7.0f)}, dinp_d(accumulate ? g_in : nan_in),
        dw_d(accumulate ? g_w : nan_w), db_d(accumulate ? g_b : nan_b);
    kernels::cuda::matmul_forward(out_d.get(), x_d.get(), w_d.get(), with_bias ? b_d.get() : nullptr, N, IC, OC);
    kernels::cuda::matmul_backward(with_bias ? dinp_d.get() : nullptr, dw_d.get(), with_bias ? db_d.get() : nullptr,
                                   dout_d.get(), x_d.get(), w_d.get(), N, IC, OC, accumulate, accumulate);
    expect_close(out_d.host(), out, 1e-4, "out");
    expect_close(dinp_d.host(), dinp, 1e-4, "dinp");
    expect_close(dw_d.host(), dw, 1e-4, "dweight");
    if (with_bias) expect_close(db_d.host(), db, 1e-4, "dbias");
  }
  // tensors starting one float into their buffers, as slices of a larger one do: cuBLASLt must be
  // asked for algorithms that take 4-byte aligned operands, not its default 256
  Vec out((size_t)N * OC);
  kernels::cpu::matmul_forward(out.data(), x.data(), w.data(), bias.data(), N, IC, OC);
  Vec x1(1, 0.0f), w1(1, 0.0f), b1(1, 0.0f);
  x1.insert(x1.end(), x.begin(), x.end());
  w1.insert(w1.end(), w.begin(), w.end());
  b1.insert(b1.end(), bias.begin(), bias.end());
  DeviceVec x_d(x1), w_d(w1), b_d(b1), out_d{Vec(out.size() + 1)};
  kernels::cuda::matmul_forward(out_d.get() + 1, x_d.get() + 1, w_d.get() + 1, b_d.get() + 1, N, IC, OC);
  Vec got = out_d.host();
  expect_close(Vec(got.begin() + 1, got.end()), out, 1e-4, "out, unaligned operands");
}

TEST_F(CudaKernels, MatmulBf16MatchesCpu) {
  const int N = 150, IC = 96, OC = 130;
  Vec x = randn((size_t)N * IC, 130), bias = randn(OC, 132);
  std::vector<kernels::bf16> w = to_bf16(randn((size_t)OC * IC, 131, 0.1f));
  Vec dout = randn((size_t)N * OC, 133), g_in = randn((size_t)N * IC, 134), g_w = randn((size_t)OC * IC, 135),
      g_b = randn(OC, 136);
  for (bool with_bias : {true, false})
  for (bool accumulate : {true, false}) {
    SCOPED_TRACE(with_bias ? "with bias" : "without bias (and no dinp)");
    SCOPED_TRACE(accumulate ? "accumulate" : "overwrite (device gradients start as NaN)");
    Vec out((size_t)N * OC), dinp = g_in, dw = g_w, db = g_b, nan_in(g_in.size(), NAN), nan_w(g_w.size(), NAN),
        nan_b(g_b.size(), NAN);
    kernels::cpu::matmul_forward_bf16(out.data(), x.data(), w.data(), with_bias ? bias.data() : nullptr, N, IC, OC);
    kernels::cpu::matmul_backward_bf16(with_bias ? dinp.data() : nullptr, dw.data(), with_bias ? db.data() : nullptr,
                                       dout.data(), x.data(), w.data(), N, IC, OC, accumulate, accumulate);

    DeviceVec x_d(x), b_d(bias), dout_d(dout), out_d{Vec(out.size(), 7.0f)}, dinp_d(accumulate ? g_in : nan_in),
        dw_d(accumulate ? g_w : nan_w), db_d(accumulate ? g_b : nan_b);
    DeviceBf16 w_d(w);
    kernels::cuda::matmul_forward_bf16(out_d.get(), x_d.get(), w_d.get(), with_bias ? b_d.get() : nullptr, N, IC,
                                       OC);
    kernels::cuda::matmul_backward_bf16(with_bias ? dinp_d.get() : nullptr, dw_d.get(),
                                        with_bias ? db_d.get() : nullptr, dout_d.get(), x_d.get(), w_d.get(), N, IC,
                                        OC, accumulate, accumulate);
    expect_close(out_d.host(), out, 1e-4, "out");
    expect_close(dinp_d.host(), dinp, 1e-4, "dinp");
    expect_close(dw_d.host(), dw, 1e-4, "dweight");
    if (with_bias) expect_close(db_d.host(), db, 1e-4, "dbias");
  }
  // a larger problem after the smaller ones: the bf16 scratch buffer grows
  const int N2 = 2 * N + 3;
  Vec x2 = randn((size_t)N2 * IC, 137), out2((size_t)N2 * OC);
  kernels::cpu::matmul_forward_bf16(out2.data(), x2.data(), w.data(), bias.data(), N2, IC, OC);
  DeviceVec x2_d(x2), b_d(bias), out2_d{Vec(out2.size())};
  DeviceBf16 w_d(w);
  kernels::cuda::matmul_forward_bf16(out2_d.get(), x2_d.get(), w_d.get(), b_d.get(), N2, IC, OC);
  expect_close(out2_d.host(), out2, 1e-4, "out, N grown");
}

// cuBLASLt's GELU_AUX(_BIAS) epilogue against the CPU's GEMM then gelu_forward, fp32 and bf16:
// pre within the matmul tolerance, out within it too (the epilogue's tanh against the CPU's).
TEST_F(CudaKernels, MatmulGeluMatchesCpu) {
  const int N = 33, IC = 48, OC = 136;  // OC a multiple of 8: the auxiliary leading dimension
  Vec x = randn((size_t)N * IC, 150), wf = randn((size_t)OC * IC, 151, 0.2f), bias = randn(OC, 152);
  std::vector<kernels::bf16> w16 = to_bf16(wf);
  for (bool bf16 : {false, true})
    for (bool with_bias : {true, false}) {
      SCOPED_TRACE(std::string(bf16 ? "bf16" : "fp32") + (with_bias ? ", bias" : ", no bias"));
      const float* b = with_bias ? bias.data() : nullptr;
      Vec out((size_t)N * OC), pre((size_t)N * OC);
      if (bf16) kernels::cpu::matmul_gelu_forward_bf16(out.data(), pre.data(), x.data(), w16.data(), b, N, IC, OC);
      else kernels::cpu::matmul_gelu_forward(out.data(), pre.data(), x.data(), wf.data(), b, N, IC, OC);
      DeviceVec x_d(x), w_d(wf), b_d(bias), out_d{Vec(out.size(), 7.0f)}, pre_d{Vec(pre.size(), 8.0f)};
      DeviceBf16 w16_d(w16);
      float* bd = with_bias ? b_d.get() : nullptr;
      if (bf16) kernels::cuda::matmul_gelu_forward_bf16(out_d.get(), pre_d.get(), x_d.get(), w16_d.get(), bd, N, IC, OC);
      else kernels::cuda::matmul_gelu_forward(out_d.get(), pre_d.get(), x_d.get(), w_d.get(), bd, N, IC, OC);
      expect_close(pre_d.host(), pre, 1e-4, "pre");
      expect_close(out_d.host(), out, 1e-4, "out");
    }
}

TEST_F(CudaKernels, Bf16RoundStochasticMatchesHost) {
  const size_t n = 100003;
  Vec x = randn(n, 140, 10.0f);
  // the special values keep their meaning; tiny and huge magnitudes round like any other
  Vec special = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-40f, -1e-40f, 3.0e38f, -3.0e38f, 1.0f};
  std::copy(special.begin(), special.end(), x.begin());
  // seed and step use their upper 32 bits; the offset is past 2^32 and not a multiple of 8
  const uint64_t seed = 0x123456789abcdef1ull, step = (1ull << 32) + 7, offset = (5ull << 32) + 3;
  auto expect_bits = [&](const std::vector<kernels::bf16>& got, size_t first, uint64_t off, const char* what) {
    ASSERT_EQ(got.size(), n - first) << what;
    for (size_t i = 0; i < got.size(); i++) {
      kernels::bf16 want =
          kernels::bf16_round_stochastic_bits(x[first + i], kernels::stochastic_round_bits(seed, step, off + i));
      ASSERT_EQ(got[i].bits, want.bits) << what << "[" << i << "] of input " << x[first + i];
    }
  };
  DeviceVec x_d(x);
  DeviceBf16 out_d{std::vector<kernels::bf16>(n)};
  kernels::cuda::bf16_round_stochastic(out_d.get(), x_d.get(), n, seed, step, offset);
  expect_bits(out_d.host(), 0, offset, "whole");
  // a shard from element 13 on, with its global offset: the same bits as within the whole
  const size_t first = 13;
  DeviceBf16 tail_d{std::vector<kernels::bf16>(n - first)};
  kernels::cuda::bf16_round_stochastic(tail_d.get(), x_d.get() + first, n - first, seed, step, offset + first);
  expect_bits(tail_d.host(), first, offset + first, "shard");
}

TEST_F(CudaKernels, ScaledResidualMatchesCpu) {
  const float scale = 0.37f;
  Vec a = randn(N, 150), b = randn(N, 151);
  Vec out(N);
  kernels::cpu::scaled_residual_forward(out.data(), a.data(), b.data(), scale, N);

  DeviceVec a_d(a), b_d(b), out_d{Vec(N)}, inplace_d(a);
  kernels::cuda::scaled_residual_forward(out_d.get(), a_d.get(), b_d.get(), scale, N);
  kernels::cuda::scaled_residual_forward(inplace_d.get(), inplace_d.get(), b_d.get(), scale, N);
  expect_close(out_d.host(), out, 1e-6, "out");
  expect_close(inplace_d.host(), out, 1e-6, "out in place");
}

TEST_F(CudaKernels, EluGateMatchesCpu) {
  Vec x = randn(N, 160, 3.0f), dout = randn(N, 161), g0 = randn(N, 162);
  x[0] = 0.0f;  // the branch point: exp(0) = 1 = 1 + 0
  expect_activation_matches_cpu({kernels::cpu::elu_gate_forward, kernels::cpu::elu_gate_backward},
                                {kernels::cuda::elu_gate_forward, kernels::cuda::elu_gate_backward}, x, dout, g0, 1e-6,
                                1e-5);
}

TEST_F(CudaKernels, TokenShiftMatchesCpu) {
  const int B = 3, T = 37, C = 100;  // C not a multiple of 32
  size_t n = (size_t)B * T * C;
  Vec x = randn(n, 170), prev = randn((size_t)B * C, 171), dout = randn(n, 172), g_in = randn(n, 173),
      g_mix = randn(C, 174);
  Vec mix(C);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::mt19937 rng(175);
  for (float& m : mix) m = unit(rng);
  for (bool with_prev : {true, false}) {
    SCOPED_TRACE(with_prev ? "with prev" : "without prev");
    Vec out(n);
    kernels::cpu::token_shift_forward(out.data(), x.data(), with_prev ? prev.data() : nullptr, mix.data(), B, T, C);
    DeviceVec x_d(x), prev_d(prev), mix_d(mix), out_d{Vec(n)};
    kernels::cuda::token_shift_forward(out_d.get(), x_d.get(), with_prev ? prev_d.get() : nullptr, mix_d.get(), B, T,
                                       C);
    expect_close(out_d.host(), out, 1e-6, "out");
  }
  Vec dinp = g_in, dmix = g_mix;
  kernels::cpu::token_shift_backward(dinp.data(), dmix.data(), dout.data(), x.data(), mix.data(), B, T, C);
  DeviceVec x_d(x), mix_d(mix), dout_d(dout), dinp_d(g_in), dmix_d(g_mix);
  kernels::cuda::token_shift_backward(dinp_d.get(), dmix_d.get(), dout_d.get(), x_d.get(), mix_d.get(), B, T, C);
  expect_close(dinp_d.host(), dinp, 1e-6, "dinp");
  expect_close(dmix_d.host(), dmix, 1e-4, "dmix");
}

TEST_F(CudaKernels, HeadLayernormMatchesCpu) {
  struct Case {
    int N, NH, hs, ld;
  };
  // hs 40 (not a multiple of 32) inside rows wider than the heads (q of a qkv row); hs 64 packed
  for (Case c : {Case{77, 3, 40, 3 * 3 * 40 + 5}, Case{50, 4, 64, 4 * 64}}) {
    SCOPED_TRACE("N " + std::to_string(c.N) + " NH " + std::to_string(c.NH) + " hs " + std::to_string(c.hs) +
                 " ld " + std::to_string(c.ld));
    size_t n = (size_t)c.N * c.ld, rows = (size_t)c.N * c.NH;
    Vec x = randn(n, 180, 2.0f), w = randn(c.hs, 181), b = randn(c.hs, 182), dout = randn(n, 183);
    for (float& v : x) v += 3.0f;  // heads away from zero mean
    Vec g_in = randn(n, 184), g_w = randn(c.hs, 185), g_b = randn(c.hs, 186);
    Vec out = randn(n, 187), mean(rows), rstd(rows), dinp = g_in, dw = g_w, db = g_b;
    DeviceVec out_d(out);  // the columns outside the heads keep what they held
    kernels::cpu::head_layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), c.N,
                                         c.NH, c.hs, c.ld);
    kernels::cpu::head_layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                                          mean.data(), rstd.data(), c.N, c.NH, c.hs, c.ld);

    DeviceVec x_d(x), w_d(w), b_d(b), dout_d(dout), mean_d{Vec(rows)}, rstd_d{Vec(rows)}, inplace_d(x);
    DeviceVec imean_d{Vec(rows)}, irstd_d{Vec(rows)};
    kernels::cuda::head_layernorm_forward(out_d.get(), mean_d.get(), rstd_d.get(), x_d.get(), w_d.get(), b_d.get(),
                                          c.N, c.NH, c.hs, c.ld);
    kernels::cuda::head_layernorm_forward(inplace_d.get(), imean_d.get(), irstd_d.get(), inplace_d.get(), w_d.get(),
                                          b_d.get(), c.N, c.NH, c.hs, c.ld);
    expect_close(out_d.host(), out, 1e-5, "out");
    expect_close(mean_d.host(), mean, 1e-5, "mean");
    expect_close(rstd_d.host(), rstd, 1e-5, "rstd");
    Vec inplace = x, imean(rows), irstd(rows);
    kernels::cpu::head_layernorm_forward(inplace.data(), imean.data(), irstd.data(), inplace.data(), w.data(),
                                         b.data(), c.N, c.NH, c.hs, c.ld);
    expect_close(inplace_d.host(), inplace, 1e-5, "out in place");
    // the backward from the CPU's statistics, so that only the backward is compared
    DeviceVec cmean_d(mean), crstd_d(rstd), dinp_d(g_in), dw_d(g_w), db_d(g_b);
    kernels::cuda::head_layernorm_backward(dinp_d.get(), dw_d.get(), db_d.get(), dout_d.get(), x_d.get(), w_d.get(),
                                           cmean_d.get(), crstd_d.get(), c.N, c.NH, c.hs, c.ld);
    expect_close(dinp_d.host(), dinp, 1e-4, "dinp");
    expect_close(dw_d.host(), dw, 1e-4, "dweight");
    expect_close(db_d.host(), db, 1e-4, "dbias");
  }
}

TEST_F(CudaKernels, CrossentropyMatchesCpu) {
  const int N = 70, V = 1000, Vp = 1024, ignore = -100;
  Vec logits = randn((size_t)N * Vp, 40, 3.0f);
  std::vector<int> targets = randint(N, V, 41);
  targets[3] = targets[50] = ignore;
  for (float dloss : {0.0f, 1.0f / N}) {
    SCOPED_TRACE(dloss == 0.0f ? "forward only" : "forward and backward");
    Vec cpu = logits, losses(N);
    kernels::cpu::crossentropy_forward_backward(cpu.data(), losses.data(), targets.data(), N, V, Vp, dloss, ignore);
    DeviceVec logits_d(logits), losses_d{Vec(N, 5.0f)};
    DeviceInts targets_d(targets);
    kernels::cuda::crossentropy_forward_backward(logits_d.get(), losses_d.get(), targets_d.get(), N, V, Vp, dloss,
                                                 ignore);
    expect_close(losses_d.host(), losses, 1e-5, "losses");
    expect_close(logits_d.host(), cpu, 1e-5, "dlogits");  // dloss 0: the logits untouched
  }
}

// The vocabulary-parallel phases, each from the same inputs as its CPU twin (the phases before it
// taken from the CPU, so that each is compared alone), on the 3 shards of V = 1000 of Vp = 1536:
// [0,512), [512,1024) (488 real columns) and [1024,1536) (padding only). Tolerances: the maxima
// exact, sums and losses and dlogits 1e-5 (expf against std::exp, sums in another order).
TEST_F(CudaKernels, CrossentropyShardsMatchCpu) {
  const int N = 70, V = 1000, Vp = 1536, TP = 3, Vl = Vp / TP, ignore = -100;
  std::vector<int> targets = randint(N, V, 41);
  targets[3] = targets[50] = ignore;
  targets[7] = V - 1;  // the last real column, in the partly padded shard
  std::vector<Vec> shard(TP);
  Vec mxs((size_t)TP * N), sums((size_t)2 * N, 0.0f);
  for (int r = 0; r < TP; r++) {
    shard[r] = randn((size_t)N * Vl, 42 + r, 3.0f);
    DeviceVec logits_d(shard[r]), mx_d{Vec(N)};
    kernels::cpu::crossentropy_shard_max(&mxs[(size_t)r * N], shard[r].data(), N, V, r * Vl, Vl);
    kernels::cuda::crossentropy_shard_max(mx_d.get(), logits_d.get(), N, V, r * Vl, Vl);
    expect_close(mx_d.host(), Vec(&mxs[(size_t)r * N], &mxs[(size_t)(r + 1) * N]), 0.0, "shard max");
  }
  DeviceVec mxs_d(mxs);
  DeviceInts targets_d(targets);
  std::vector<Vec> mx(TP, Vec(N));
  for (int r = 0; r < TP; r++) {
    Vec part((size_t)2 * N);
    kernels::cpu::crossentropy_shard_sums(part.data(), mx[r].data(), mxs.data(), shard[r].data(), targets.data(), N,
                                          TP, V, r * Vl, Vl, ignore);
    DeviceVec logits_d(shard[r]), part_d{Vec((size_t)2 * N, 7.0f)}, mx_d{Vec(N)};
    kernels::cuda::crossentropy_shard_sums(part_d.get(), mx_d.get(), mxs_d.get(), logits_d.get(), targets_d.get(), N,
                                           TP, V, r * Vl, Vl, ignore);
    expect_close(part_d.host(), part, 1e-5, "sums and target logits");
    expect_close(mx_d.host(), mx[r], 0.0, "global max");
    for (size_t k = 0; k < sums.size(); k++) sums[k] += part[k];
  }
  DeviceVec sums_d(sums);
  for (float dloss : {0.0f, 1.0f / N})
    for (int r = 0; r < TP; r++) {
      SCOPED_TRACE("shard " + std::to_string(r) + (dloss == 0.0f ? ", forward only" : ", forward and backward"));
      Vec cpu = shard[r], losses(N);
      kernels::cpu::crossentropy_shard_finish(cpu.data(), losses.data(), mx[r].data(), sums.data(), targets.data(), N,
                                              V, r * Vl, Vl, dloss, ignore);
      DeviceVec logits_d(shard[r]), losses_d{Vec(N, 5.0f)}, mx_d(mx[r]);
      kernels::cuda::crossentropy_shard_finish(logits_d.get(), losses_d.get(), mx_d.get(), sums_d.get(),
                                               targets_d.get(), N, V, r * Vl, Vl, dloss, ignore);
      expect_close(losses_d.host(), losses, 1e-5, "losses");
      expect_close(logits_d.host(), cpu, 1e-5, "dlogits");  // dloss 0: the logits untouched
    }
}

TEST_F(CudaKernels, AdamwMatchesCpu) {
  const size_t n = 100003;
  Vec p = randn(n, 50), m(n, 0.0f), v(n, 0.0f);
  DeviceVec p_d(p), m_d(m), v_d(v);
  for (int t = 1; t <= 3; t++) {
    Vec g = randn(n, 50 + t);
    kernels::cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, t);
    DeviceVec g_d(g);
    kernels::cuda::adamw_update(p_d.get(), g_d.get(), m_d.get(), v_d.get(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.7f,
                                t);
  }
  expect_close(p_d.host(), p, 2e-6, "params");
  expect_close(m_d.host(), m, 2e-6, "m");
  expect_close(v_d.host(), v, 2e-6, "v");
}

TEST_F(CudaKernels, GlobalNormSquaredMatchesCpu) {
  for (size_t n : {size_t(1), size_t(1000), size_t(1000003)}) {
    Vec g = randn(n, 60, 0.01f);
    DeviceVec g_d(g);
    float want = kernels::cpu::global_norm_squared(g.data(), n);
    float got = kernels::cuda::global_norm_squared(g_d.get(), n);
    EXPECT_NEAR(got, want, 1e-6 * std::abs(want)) << "n = " << n;
    EXPECT_EQ(got, kernels::cuda::global_norm_squared(g_d.get(), n)) << "not deterministic, n = " << n;
  }
}

TEST_F(CudaKernels, AttentionMatchesCpu) {
  struct Case {
    int B, T, C, NH, window;
  };
  // hs 16 (lanes idle), 64 (GPT-2), 80 (not a multiple of 32); T not a multiple of any tile
  for (Case c : {Case{2, 77, 64, 4, 0}, Case{1, 150, 128, 2, 0}, Case{2, 70, 160, 2, 17}, Case{1, 40, 64, 1, 1}}) {
    SCOPED_TRACE("B " + std::to_string(c.B) + " T " + std::to_string(c.T) + " C " + std::to_string(c.C) + " NH " +
                 std::to_string(c.NH) + " window " + std::to_string(c.window));
    size_t nqkv = (size_t)c.B * c.T * 3 * c.C, nout = (size_t)c.B * c.T * c.C, nlse = (size_t)c.B * c.NH * c.T;
    Vec qkv = randn(nqkv, 70), dout = randn(nout, 71), g0 = randn(nqkv, 72);
    Vec out(nout), lse(nlse), dqkv = g0;
    kernels::cpu::attention_forward(out.data(), lse.data(), qkv.data(), c.B, c.T, c.C, c.NH, c.window);
    kernels::cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), c.B, c.T, c.C,
                                     c.NH, c.window);

    DeviceVec qkv_d(qkv), dout_d(dout), out_d{Vec(nout)}, lse_d{Vec(nlse)}, dqkv_d(g0);
    kernels::cuda::attention_forward(out_d.get(), lse_d.get(), qkv_d.get(), c.B, c.T, c.C, c.NH, c.window);
    expect_close(out_d.host(), out, 1e-4, "out");
    expect_close(lse_d.host(), lse, 1e-4, "lse");
    // the backward from the CPU's out and lse, so that only the backward is compared
    DeviceVec cout_d(out), clse_d(lse);
    kernels::cuda::attention_backward(dqkv_d.get(), dout_d.get(), qkv_d.get(), cout_d.get(), clse_d.get(), c.B, c.T,
                                      c.C, c.NH, c.window);
    expect_close(dqkv_d.host(), dqkv, 1e-4, "dqkv");
  }
}

TEST_F(CudaKernels, Relu2MatchesCpu) {
  Vec x = randn(N, 80, 2.0f), dout = randn(N, 81), g0(N, NAN);  // dinp is written, never read
  expect_activation_matches_cpu({kernels::cpu::relu2_forward, kernels::cpu::relu2_backward},
                                {kernels::cuda::relu2_forward, kernels::cuda::relu2_backward}, x, dout, g0, 0.0, 1e-6);
}

TEST_F(CudaKernels, RopeMatchesCpu) {
  // partial rotary (R < hs), rows wider than the heads (ld > NH*hs, as inside qkv), large positions
  const int B = 2, T = 33, NH = 3, hs = 24, R = 16, ld = 100, pos0 = 1000;
  const float base = 10000.0f;
  size_t n = (size_t)B * T * ld;
  Vec x = randn(n, 90), dout = randn(n, 91), g0 = randn(n, 92);
  Vec out(n, 0.0f), dinp = g0;
  kernels::cpu::rope_forward(out.data(), x.data(), B, T, NH, hs, ld, R, base, pos0);
  kernels::cpu::rope_backward(dinp.data(), dout.data(), B, T, NH, hs, ld, R, base, pos0);

  DeviceVec x_d(x), dout_d(dout), out_d{Vec(n, 0.0f)}, dinp_d(g0), inplace_d(x);
  kernels::cuda::rope_forward(out_d.get(), x_d.get(), B, T, NH, hs, ld, R, base, pos0);
  kernels::cuda::rope_forward(inplace_d.get(), inplace_d.get(), B, T, NH, hs, ld, R, base, pos0);
  kernels::cuda::rope_backward(dinp_d.get(), dout_d.get(), B, T, NH, hs, ld, R, base, pos0);
  expect_close(out_d.host(), out, 1e-6, "out");
  Vec inplace = x;  // in place: the columns outside the heads keep their input
  kernels::cpu::rope_forward(inplace.data(), inplace.data(), B, T, NH, hs, ld, R, base, pos0);
  expect_close(inplace_d.host(), inplace, 1e-6, "out in place");
  expect_close(dinp_d.host(), dinp, 1e-6, "dinp");
}

// A checked wrapper's error names the status it got, where, and a likely cause.
void expect_check_error(void (*check)(), const std::string& status, const std::string& cause) {
  try {
    check();
    FAIL() << "the check of " << status << " did not throw";
  } catch (const std::runtime_error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(status + " failed at"), std::string::npos) << m;
    EXPECT_NE(m.find("likely cause: " + cause), std::string::npos) << m;
  }
}

TEST(CudaCheck, ErrorsNameTheCallAndACause) {
  expect_check_error([] { cuda_check(cudaErrorMemoryAllocation); }, "cudaErrorMemoryAllocation", "out of GPU memory");
  expect_check_error([] { cublaslt_check(CUBLAS_STATUS_NOT_SUPPORTED); }, "CUBLAS_STATUS_NOT_SUPPORTED",
                     "no cuBLASLt algorithm");
  expect_check_error([] { cublas_check(CUBLAS_STATUS_ALLOC_FAILED); }, "CUBLAS_STATUS_ALLOC_FAILED",
                     "out of GPU memory");
}

}  // namespace
