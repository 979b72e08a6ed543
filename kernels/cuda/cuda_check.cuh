#pragma once
// cuda_check(call): every CUDA runtime call goes through it, so a failure reports which call,
// where, CUDA's own message and what usually causes it, instead of surfacing later as garbage.
// cublas_check(call) does the same for cuBLAS. Host-only, so plain C++ (the tests) may include it.
#include <cublas_v2.h>
#include <cuda_runtime.h>

namespace kernels::cuda {

// Throws std::runtime_error: "cudaMalloc(&p, n) failed at file.cu:12: cudaErrorMemoryAllocation
// (out of memory); likely cause: ...".
[[noreturn]] void cuda_fail(cudaError_t err, const char* call, const char* file, int line);

inline void cuda_check_result(cudaError_t err, const char* call, const char* file, int line) {
  if (err != cudaSuccess) cuda_fail(err, call, file, line);
}

// The process's cuBLAS handle on the current device, created on first use (plain fp32 math, no
// TF32), on the default stream. Never destroyed: teardown order at exit is not ours to control.
// Defined in kernels/cuda/cublas.cu.
cublasHandle_t cublas_handle();

// Throws std::runtime_error: "cublasSgemm(...) failed at file.cu:12: CUBLAS_STATUS_ALLOC_FAILED
// (...); likely cause: ...".
[[noreturn]] void cublas_fail(cublasStatus_t st, const char* call, const char* file, int line);

inline void cublas_check_result(cublasStatus_t st, const char* call, const char* file, int line) {
  if (st != CUBLAS_STATUS_SUCCESS) cublas_fail(st, call, file, line);
}

}  // namespace kernels::cuda

#define cublas_check(call) ::kernels::cuda::cublas_check_result((call), #call, __FILE__, __LINE__)
#define cuda_check(call) ::kernels::cuda::cuda_check_result((call), #call, __FILE__, __LINE__)
