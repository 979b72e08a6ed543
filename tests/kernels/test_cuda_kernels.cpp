// The CUDA kernels against their CPU twins (themselves checked against references in
// test_kernels.cpp) on the same random inputs, forward and backward, backward accumulating onto
// random gradients. Skipped where no CUDA device is present.
// Tolerances: residual is exact (the same float additions); GELU |cuda - cpu| <= 1e-5 (1 + |cpu|),
// the two tanh implementations differ by ~2e-7.
#include <gtest/gtest.h>

#include "tests/test_util.h"

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
class DeviceVec {
 public:
  explicit DeviceVec(const Vec& h) : n_(h.size()) {
    cuda_check(cudaMalloc(&p_, n_ * sizeof(float)));
    cuda_check(cudaMemcpy(p_, h.data(), n_ * sizeof(float), cudaMemcpyHostToDevice));
  }
  DeviceVec(const DeviceVec&) = delete;
  DeviceVec& operator=(const DeviceVec&) = delete;
  ~DeviceVec() { cudaFree(p_); }
  float* get() { return p_; }
  Vec host() const {
    Vec h(n_);
    cuda_check(cudaMemcpy(h.data(), p_, n_ * sizeof(float), cudaMemcpyDeviceToHost));
    return h;
  }

 private:
  float* p_ = nullptr;
  size_t n_;
};

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

}  // namespace
