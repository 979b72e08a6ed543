// Device discovery and the error reporting behind cuda_check.
#include <stdexcept>
#include <string>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

// What a user can do about the errors people actually hit; CUDA's own strings rarely say.
const char* likely_cause(cudaError_t err) {
  switch (err) {
    case cudaErrorNoDevice:
      return "no CUDA GPU is visible: check nvidia-smi and CUDA_VISIBLE_DEVICES";
    case cudaErrorInsufficientDriver:
      return "the NVIDIA driver is missing or older than the CUDA toolkit this was built with";
    case cudaErrorNoKernelImageForDevice:
      return "this GPU's architecture is not in CMAKE_CUDA_ARCHITECTURES; rebuild for it";
    case cudaErrorMemoryAllocation:
      return "out of GPU memory: lower the micro-batch size or the sequence length";
    case cudaErrorInvalidValue:
      return "a bad argument: a null or host pointer, or a size of zero";
    case cudaErrorInvalidConfiguration:
      return "a bad launch configuration: too many threads per block or an empty grid";
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
      return "a kernel accessed memory out of bounds; run under compute-sanitizer";
    default:
      return "see the CUDA runtime documentation for this error";
  }
}

}  // namespace

void cuda_fail(cudaError_t err, const char* call, const char* file, int line) {
  throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                           cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                           "); likely cause: " + likely_cause(err));
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    // No driver or no GPU: a CPU-only machine, not an error. Clear it so that the next
    // cuda_check(cudaGetLastError()) does not report it.
    cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace kernels::cuda
