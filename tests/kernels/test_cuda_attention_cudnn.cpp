// cuDNN's fused flash attention (kernels/cuda/cudnn_attention.h, train.attention_backend: cudnn)
// against the CPU attention (kernels::cpu::attention_forward/backward) run on the same
// bf16-rounded q, k, v and dout, full attention and sliding windows, head sizes 64 and 32, T not
// a multiple of 64 (nor of cuDNN's tiles). The backward runs from cuDNN's own out and lse, as in
// training, and accumulates onto random gradients. Skipped, with a message, where no CUDA device
// or no sm_80+ one is present (ctest counts them as skipped through SKIP_REGULAR_EXPRESSION).
// Block sliding windows, which cuDNN cannot mask, go through the cudnn backend table to the native
// cuda kernels: their results bit for bit.
// Tolerances, max |cudnn - cpu| over a tensor <= tol * max |cpu| (for dq, dk, dv, each compared on
// its own: of the gradient added onto the random start):
//  - 2e-2 for out, dq, dk, dv: cuDNN rounds the probabilities to bf16 before P V, and its outputs
//    (O, dQ, dK, dV) to bf16, each a relative error up to 2^-9, plus fp32 sums in another order;
//  - 2e-3 for lse: it comes from fp32 scores of the same bf16 q, k, so only the summation order
//    and the exp differ; a base-2 or unscaled statistic would be off by far more.
#include <gtest/gtest.h>

#include "tests/cuda_test_util.h"
#include "tests/test_util.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/bf16.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/cudnn_attention.h"
#include "kernels/kernels.h"

namespace {

using Vec = std::vector<float>;
using test_util::DeviceVec;
using test_util::randn;

// x rounded to bf16 (nearest even), kept as floats: what cuDNN reads
Vec bf16_rounded(Vec x) {
  for (float& v : x) v = kernels::bf16_to_float(kernels::bf16_round_nearest(v));
  return x;
}

// Part `part` (0 q, 1 k, 2 v) of every (3C) row of x
Vec columns(const Vec& x, int C, int part) {
  Vec out;
  for (size_t r = 0; r < x.size() / (3 * C); r++)
    out.insert(out.end(), x.begin() + r * 3 * C + part * C, x.begin() + r * 3 * C + (part + 1) * C);
  return out;
}

// max |(got - base) - (want - base)| <= tol * max |want - base|
void expect_close_to_scale(const Vec& got, const Vec& want, const Vec& base, double tol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double err = 0, scale = 0;
  size_t worst = 0;
  for (size_t i = 0; i < got.size(); i++) {
    const double b = base.empty() ? 0.0 : double(base[i]);
    const double e = std::abs(double(got[i]) - double(want[i]));
    if (!(e <= err)) err = e, worst = i;  // a NaN becomes the worst
    scale = std::max(scale, std::abs(double(want[i]) - b));
  }
  EXPECT_LE(err, tol * scale) << what << ": worst at [" << worst << "]: got " << got[worst] << ", want "
                              << want[worst] << " (largest reference " << scale << ")";
}

class CudnnAttention : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount found none";
    cudaDeviceProp prop{};
    cuda_check(cudaGetDeviceProperties(&prop, 0));
    if (prop.major < 8)
      GTEST_SKIP() << "cuDNN's fused attention needs sm_80+; device 0 is sm_" << prop.major << prop.minor;
  }
};

TEST_F(CudnnAttention, MatchesCpuOnBf16Inputs) {
  struct Case {
    int B, T, C, NH, window;
  };
  // hs 64 and 32; T 77, 150, 100, 70; windows shorter than T, one of a single token
  for (Case c : {Case{2, 77, 128, 2, 0}, Case{1, 150, 128, 4, 0}, Case{2, 100, 128, 2, 17}, Case{1, 70, 96, 3, 1}}) {
    SCOPED_TRACE("B " + std::to_string(c.B) + " T " + std::to_string(c.T) + " C " + std::to_string(c.C) + " NH " +
                 std::to_string(c.NH) + " window " + std::to_string(c.window));
    const size_t nqkv = (size_t)c.B * c.T * 3 * c.C, nout = (size_t)c.B * c.T * c.C, nlse = (size_t)c.B * c.NH * c.T;
    const Vec qkv = bf16_rounded(randn(nqkv, 70)), dout = bf16_rounded(randn(nout, 71)), g0 = randn(nqkv, 72);

    Vec out(nout), lse(nlse), dqkv = g0;
    kernels::cpu::attention_forward(out.data(), lse.data(), qkv.data(), c.B, c.T, c.C, c.NH, c.window, 0);
    kernels::cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), c.B, c.T, c.C,
                                     c.NH, c.window, 0);

    DeviceVec qkv_d(qkv), dout_d(dout), out_d{Vec(nout)}, lse_d{Vec(nlse)}, dqkv_d(g0);
    kernels::cuda::cudnn_attention_forward(out_d.get(), lse_d.get(), qkv_d.get(), c.B, c.T, c.C, c.NH, c.window);
    expect_close_to_scale(out_d.host(), out, {}, 2e-2, "out");
    expect_close_to_scale(lse_d.host(), lse, {}, 2e-3, "lse");
    kernels::cuda::cudnn_attention_backward(dqkv_d.get(), dout_d.get(), qkv_d.get(), out_d.get(), lse_d.get(), c.B,
                                            c.T, c.C, c.NH, c.window);
    const Vec got = dqkv_d.host();
    for (int part = 0; part < 3; part++)
      expect_close_to_scale(columns(got, c.C, part), columns(dqkv, c.C, part), columns(g0, c.C, part), 2e-2,
                            part == 0 ? "dq" : part == 1 ? "dk" : "dv");
  }
}

TEST_F(CudnnAttention, BlockWindowsRunTheNativeKernels) {
  const int B = 2, T = 70, C = 64, NH = 2, window = 24, block = 8;
  const size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C, nlse = (size_t)B * NH * T;
  const Backend& cudnn = backend_for(Backend::Device::cuda, 0, Backend::Attention::cudnn);
  const Vec g0 = randn(nqkv, 72);
  DeviceVec qkv(randn(nqkv, 70)), dout(randn(nout, 71)), out{Vec(nout)}, lse{Vec(nlse)}, dqkv(g0);
  DeviceVec out_native{Vec(nout)}, lse_native{Vec(nlse)}, dqkv_native(g0);
  cudnn.attention_forward(out.get(), lse.get(), qkv.get(), B, T, C, NH, window, block);
  kernels::cuda::attention_forward(out_native.get(), lse_native.get(), qkv.get(), B, T, C, NH, window, block);
  EXPECT_EQ(out.host(), out_native.host());
  EXPECT_EQ(lse.host(), lse_native.host());
  cudnn.attention_backward(dqkv.get(), dout.get(), qkv.get(), out.get(), lse.get(), B, T, C, NH, window, block);
  kernels::cuda::attention_backward(dqkv_native.get(), dout.get(), qkv.get(), out_native.get(), lse_native.get(), B,
                                    T, C, NH, window, block);
  EXPECT_EQ(dqkv.host(), dqkv_native.host());
}

}  // namespace
