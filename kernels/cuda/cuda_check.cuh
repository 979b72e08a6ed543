#pragma once
// cuda_check(call): every CUDA runtime call goes through it, so a failure reports which call,
// where, CUDA's own message and what usually causes it, instead of surfacing later as garbage.
#include <cuda_runtime.h>

namespace kernels::cuda {

// Throws std::runtime_error: "cudaMalloc(&p, n) failed at file.cu:12: cudaErrorMemoryAllocation
// (out of memory); likely cause: ...".
[[noreturn]] void cuda_fail(cudaError_t err, const char* call, const char* file, int line);

inline void cuda_check_result(cudaError_t err, const char* call, const char* file, int line) {
  if (err != cudaSuccess) cuda_fail(err, call, file, line);
}

}  // namespace kernels::cuda

#define cuda_check(call) ::kernels::cuda::cuda_check_result((call), #call, __FILE__, __LINE__)
