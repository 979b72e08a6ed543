#pragma once
// cuda_check(call): every CUDA runtime call goes through it, so a failure reports which call,
// where, CUDA's own message and what usually causes it, instead of surfacing later as garbage.
// cublas_check(call) and cublaslt_check(call) do the same for cuBLAS and cuBLASLt. Host-only, so
// plain C++ (the tests) may include it.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>

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

// The process's cuBLASLt handle and the workspace its GEMMs may use (split-K partial sums), both
// created on first use on the current device and never freed, like the cuBLAS handle. Defined in
// kernels/cuda/cublas.cu.
constexpr size_t kCublasLtWorkspaceBytes = size_t(32) << 20;
struct CublasLt {
  cublasLtHandle_t handle;
  void* workspace;  // (kCublasLtWorkspaceBytes) device
};
const CublasLt& cublaslt();

// Throws std::runtime_error: "cublasLtMatmul(...) failed at file.cu:12: CUBLAS_STATUS_NOT_SUPPORTED
// (...); likely cause: ...", the causes being those of cuBLASLt's descriptors and algorithms.
[[noreturn]] void cublaslt_fail(cublasStatus_t st, const char* call, const char* file, int line);

inline void cublaslt_check_result(cublasStatus_t st, const char* call, const char* file, int line) {
  if (st != CUBLAS_STATUS_SUCCESS) cublaslt_fail(st, call, file, line);
}

}  // namespace kernels::cuda

#define cublas_check(call) ::kernels::cuda::cublas_check_result((call), #call, __FILE__, __LINE__)
#define cublaslt_check(call) ::kernels::cuda::cublaslt_check_result((call), #call, __FILE__, __LINE__)
#define cuda_check(call) ::kernels::cuda::cuda_check_result((call), #call, __FILE__, __LINE__)
