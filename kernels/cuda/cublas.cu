// The shared cuBLAS and cuBLASLt handles, the cuBLASLt workspace, and the error reporting behind
// cublas_check and cublaslt_check (helpers, not a kernel twin).
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"

namespace kernels::cuda {

namespace {

const char* cublas_likely_cause(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "cuBLAS could not start: no usable GPU, or the driver is too old for this toolkit";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "out of GPU memory while cuBLAS allocated its workspace";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "a bad argument: a negative size or a leading dimension smaller than the rows";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "this GPU lacks a feature the call needs";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "the GEMM kernel failed to run: often an out-of-bounds pointer; run under compute-sanitizer";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "this combination of types, layouts or sizes is not supported";
    default:
      return "see the cuBLAS documentation for this status";
  }
}

// cuBLASLt returns the same statuses, for reasons of its own: descriptors, heuristics, algorithms.
const char* cublaslt_likely_cause(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "out of host memory for a cuBLASLt descriptor";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "a bad descriptor: an attribute value of the wrong size, a zero size, a leading dimension smaller "
             "than the rows, or a workspace smaller than the chosen algorithm needs";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "no cuBLASLt algorithm for this combination of types, compute type, transposes, epilogue, sizes and "
             "pointer alignments on this GPU";
    default:
      return cublas_likely_cause(st);
  }
}

[[noreturn]] void throw_blas_error(const char* name, const char* text, const char* cause, const char* call,
                                   const char* file, int line) {
  throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " + name +
                           " (" + text + "); likely cause: " + cause);
}

}  // namespace

void cublas_fail(cublasStatus_t st, const char* call, const char* file, int line) {
  throw_blas_error(cublasGetStatusName(st), cublasGetStatusString(st), cublas_likely_cause(st), call, file, line);
}

void cublaslt_fail(cublasStatus_t st, const char* call, const char* file, int line) {
  throw_blas_error(cublasLtGetStatusName(st), cublasLtGetStatusString(st), cublaslt_likely_cause(st), call, file,
                   line);
}

cublasHandle_t cublas_handle() {
  static cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    cublas_check(cublasCreate(&h));
    // plain fp32: CUBLAS_DEFAULT_MATH never rounds fp32 inputs to TF32 (that takes
    // CUBLAS_TF32_TENSOR_OP_MATH), so the GEMMs match the CPU's sgemm to fp32 rounding
    cublas_check(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
    return h;
  }();
  return handle;
}

const CublasLt& cublaslt() {
  static const CublasLt lt = [] {
    CublasLt l{};
    cublaslt_check(cublasLtCreate(&l.handle));
    cuda_check(cudaMalloc(&l.workspace, kCublasLtWorkspaceBytes));
    return l;
  }();
  return lt;
}

}  // namespace kernels::cuda
