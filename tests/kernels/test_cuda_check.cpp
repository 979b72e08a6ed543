// The CUDA error checks (kernels/cuda/cuda_check.cuh): what the kernels' numbers cannot show, so it
// stays out of the backend table (test_backend_ops.cpp). Needs no device: the statuses are made up.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "kernels/cuda/cuda_check.cuh"

namespace {

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
