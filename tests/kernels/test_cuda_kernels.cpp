// The CUDA kernels against their CPU twins (themselves checked against references in
// test_kernels.cpp and test_backbone_kernels.cpp) on the same random inputs, forward and backward,
// backward accumulating onto random gradients. Skipped, with a message, where no CUDA device is
// present (ctest counts them as skipped through SKIP_REGULAR_EXPRESSION).
// Tolerances, all |cuda - cpu| <= tol * (1 + |cpu|):
//  - exact (0): residual, encoder forward, relu2 forward (the same float operations);
//  - 1e-6: relu2 backward, rope (FMA contraction; cos/sin in double, then rounded), adamw after
//    three steps (2e-6), global_norm_squared (both accumulate in double);
//  - 1e-5: GELU (the two tanh differ by ~2e-7), encoder backward (atomicAdd order), layernorm
//    forward, cross-entropy (expf against the CPU's polynomial exp, ~2 ulp);
//  - 1e-4: sums of hundreds of terms in another order: layernorm backward, matmul forward and
//    backward (cuBLAS fp32 without TF32), attention forward and backward.
#include <gtest/gtest.h>

#include "tests/test_util.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <random>
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

// A device copy of a host vector, copied back with host().
template <class T>
class DeviceBuf {
 public:
  explicit DeviceBuf(const std::vector<T>& h) : n_(h.size()) {
    cuda_check(cudaMalloc(&p_, std::max<size_t>(n_, 1) * sizeof(T)));
    cuda_check(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
  ~DeviceBuf() { cudaFree(p_); }
  T* get() { return p_; }
  std::vector<T> host() const {
    std::vector<T> h(n_);
    cuda_check(cudaDeviceSynchronize());  // surface asynchronous kernel faults here, named
    cuda_check(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};
using DeviceVec = DeviceBuf<float>;
using DeviceInts = DeviceBuf<int>;

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

TEST_F(CudaKernels, ResidualMatchesCpu) {
  Vec a = randn(N, 1), b = randn(N, 2), dout = randn(N, 3), g1 = randn(N, 4), g2 = randn(N, 5);
  Vec out(N), d1 = g1, d2 = g2;
  kernels::cpu::residual_forward(out.data(), a.data(), b.data(), N);
  kernels::cpu::residual_backward(d1.data(), d2.data(), dout.data(), N);

  DeviceVec a_d(a), b_d(b), dout_d(dout), out_d{Vec(N)}, d1_d(g1), d2_d(g2);
  kernels::cuda::residual_forward(out_d.get(), a_d.get(), b_d.get(), N);
  kernels::cuda::residual_backward(d1_d.get(), d2_d.get(), dout_d.get(), N);
  expect_close(out_d.host(), out, 0.0, "out");
  expect_close(d1_d.host(), d1, 0.0, "dinp1");
  expect_close(d2_d.host(), d2, 0.0, "dinp2");
}

TEST_F(CudaKernels, GeluMatchesCpu) {
  Vec x = randn(N, 6, 3.0f), dout = randn(N, 7), g0 = randn(N, 8);
  Vec out(N), dinp = g0;
  kernels::cpu::gelu_forward(out.data(), x.data(), N);
  kernels::cpu::gelu_backward(dinp.data(), x.data(), dout.data(), N);

  DeviceVec x_d(x), dout_d(dout), out_d{Vec(N)}, dinp_d(g0);
  kernels::cuda::gelu_forward(out_d.get(), x_d.get(), N);
  kernels::cuda::gelu_backward(dinp_d.get(), x_d.get(), dout_d.get(), N);
  expect_close(out_d.host(), out, 1e-5, "out");
  expect_close(dinp_d.host(), dinp, 1e-5, "dinp");
}

TEST_F(CudaKernels, EncoderMatchesCpu) {
  const int B = 3, T = 37, C = 96, Vp = 64, maxT = 50;  // Vp < B*T: tokens repeat
  std::vector<int> tok = randint((size_t)B * T, Vp, 10);
  Vec wte = randn((size_t)Vp * C, 11), wpe = randn((size_t)maxT * C, 12), dout = randn((size_t)B * T * C, 13);
  Vec gwte = randn((size_t)Vp * C, 14), gwpe = randn((size_t)maxT * C, 15);
  for (bool with_wpe : {true, false}) {
    SCOPED_TRACE(with_wpe ? "with wpe" : "without wpe");
    Vec out((size_t)B * T * C), dwte = gwte, dwpe = gwpe;
    kernels::cpu::encoder_forward(out.data(), tok.data(), wte.data(), with_wpe ? wpe.data() : nullptr, B, T, C);
    kernels::cpu::encoder_backward(dwte.data(), with_wpe ? dwpe.data() : nullptr, dout.data(), tok.data(), B, T, C);

    DeviceInts tok_d(tok);
    DeviceVec wte_d(wte), wpe_d(wpe), dout_d(dout), out_d{Vec(out.size())}, dwte_d(gwte), dwpe_d(gwpe);
    kernels::cuda::encoder_forward(out_d.get(), tok_d.get(), wte_d.get(), with_wpe ? wpe_d.get() : nullptr, B, T, C);
    kernels::cuda::encoder_backward(dwte_d.get(), with_wpe ? dwpe_d.get() : nullptr, dout_d.get(), tok_d.get(), B,
                                    T, C);
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
  for (bool with_bias : {true, false}) {
    SCOPED_TRACE(with_bias ? "with bias" : "without bias (and no dinp)");
    Vec out((size_t)N * OC), dinp = g_in, dw = g_w, db = g_b;
    kernels::cpu::matmul_forward(out.data(), x.data(), w.data(), with_bias ? bias.data() : nullptr, N, IC, OC);
    kernels::cpu::matmul_backward(with_bias ? dinp.data() : nullptr, dw.data(), with_bias ? db.data() : nullptr,
                                  dout.data(), x.data(), w.data(), N, IC, OC);

    DeviceVec x_d(x), w_d(w), b_d(bias), dout_d(dout), out_d{Vec(out.size(), 7.0f)}, dinp_d(g_in), dw_d(g_w),
        db_d(g_b);
    kernels::cuda::matmul_forward(out_d.get(), x_d.get(), w_d.get(), with_bias ? b_d.get() : nullptr, N, IC, OC);
    kernels::cuda::matmul_backward(with_bias ? dinp_d.get() : nullptr, dw_d.get(), with_bias ? db_d.get() : nullptr,
                                   dout_d.get(), x_d.get(), w_d.get(), N, IC, OC);
    expect_close(out_d.host(), out, 1e-4, "out");
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
  Vec x = randn(N, 80, 2.0f), dout = randn(N, 81), g0 = randn(N, 82);
  Vec out(N), dinp = g0;
  kernels::cpu::relu2_forward(out.data(), x.data(), N);
  kernels::cpu::relu2_backward(dinp.data(), x.data(), dout.data(), N);

  DeviceVec x_d(x), dout_d(dout), out_d{Vec(N)}, dinp_d(g0);
  kernels::cuda::relu2_forward(out_d.get(), x_d.get(), N);
  kernels::cuda::relu2_backward(dinp_d.get(), x_d.get(), dout_d.get(), N);
  expect_close(out_d.host(), out, 0.0, "out");
  expect_close(dinp_d.host(), dinp, 1e-6, "dinp");
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

TEST(CudaCheck, ErrorNamesTheCallAndACause) {
  try {
    cuda_check(cudaErrorMemoryAllocation);
    FAIL() << "cuda_check did not throw";
  } catch (const std::runtime_error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("cudaErrorMemoryAllocation failed at"), std::string::npos) << m;
    EXPECT_NE(m.find("likely cause: out of GPU memory"), std::string::npos) << m;
  }
}

TEST(CudaCheck, CublasErrorNamesTheCallAndACause) {
  try {
    cublas_check(CUBLAS_STATUS_ALLOC_FAILED);
    FAIL() << "cublas_check did not throw";
  } catch (const std::runtime_error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("CUBLAS_STATUS_ALLOC_FAILED failed at"), std::string::npos) << m;
    EXPECT_NE(m.find("likely cause: out of GPU memory"), std::string::npos) << m;
  }
}

}  // namespace
