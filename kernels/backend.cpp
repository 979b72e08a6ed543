// The two backend tables. cpu: kernels::cpu and host memory. cuda: kernels::cuda and the CUDA
// runtime's device memory; a copy to the host is synchronous, so it also waits for the kernels
// launched before it on the default stream.
#include "kernels/backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <sys/mman.h>

#include "common/unreachable.h"

#ifdef KVMTRAIN_HAS_CUDA
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/cudnn_attention.h"
#endif

namespace {

#define KVM_BACKEND_ENTRY(ret, fn, params) , NS::fn
#define KVM_BACKEND_TABLE(NAME, HOST)                                                                    \
  NAME, HOST KVM_KERNELS_ALL_BACKENDS(KVM_BACKEND_ENTRY), NS::kvm_forward, NS::kvm_backward, NS::kvm_decode_step, \
      NS::kvm_decode_init

// Large buffers (weights, gradients, moments, activations) sit on 2 MiB transparent huge pages:
// with 4 KiB pages the GEMMs' strided walks over a 150 MB weight miss the TLB, which cost 4-6% of a
// GPT-2 124M step (train_bench --profile, docs/decisions.md). Debian's default THP mode is
// madvise, so the pages have to be asked for.
void* host_alloc(size_t bytes) {
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t align = bytes >= kHuge ? kHuge : 64;
  const size_t rounded = std::max(align, (bytes + align - 1) / align * align);
  void* p = std::aligned_alloc(align, rounded);
  if (!p) throw std::bad_alloc();
  if (align == kHuge) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: without THP, 4 KiB pages
  std::memset(p, 0, bytes);
  return p;
}
// Zeroing the gradients is a pass over the whole model every step; one core cannot fill the
// memory bandwidth, so large buffers are split across the OpenMP threads.
void host_zero(void* p, size_t bytes) {
  constexpr size_t kPiece = size_t(1) << 20;
  if (bytes < 4 * kPiece) return void(std::memset(p, 0, bytes));
  const long pieces = long((bytes + kPiece - 1) / kPiece);
#pragma omp parallel for schedule(static)
  for (long i = 0; i < pieces; i++) {
    const size_t begin = size_t(i) * kPiece;
    std::memset(static_cast<char*>(p) + begin, 0, std::min(kPiece, bytes - begin));
  }
}
void host_copy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void host_copy_rows(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t rows) {
  for (size_t r = 0; r < rows; r++)
    std::memcpy(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
}

#define NS kernels::cpu
const Backend kCpu{KVM_BACKEND_TABLE("cpu", true), host_alloc, std::free, host_zero, host_copy, host_copy,
                   host_copy, host_copy_rows};
#undef NS

#ifdef KVMTRAIN_HAS_CUDA
void* cuda_alloc(size_t bytes) {
  void* p = nullptr;
  cuda_check(cudaMalloc(&p, bytes ? bytes : 64));
  cuda_check(cudaMemset(p, 0, bytes));
  return p;
}
void cuda_free(void* p) { cudaFree(p); }  // never throws: called from destructors
void cuda_zero(void* p, size_t bytes) { cuda_check(cudaMemsetAsync(p, 0, bytes)); }
void cuda_copy(void* dst, const void* src, size_t bytes) {
  cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice));
}
void cuda_to_host(void* host, const void* src, size_t bytes) {
  cuda_check(cudaMemcpy(host, src, bytes, cudaMemcpyDeviceToHost));
}
void cuda_from_host(void* dst, const void* host, size_t bytes) {
  cuda_check(cudaMemcpy(dst, host, bytes, cudaMemcpyHostToDevice));
}
void cuda_copy_rows(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t rows) {
  if (rows) cuda_check(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyDeviceToDevice));
}

#define NS kernels::cuda
const Backend kCuda{KVM_BACKEND_TABLE("cuda", false), cuda_alloc, cuda_free, cuda_zero, cuda_copy, cuda_to_host,
                    cuda_from_host, cuda_copy_rows};
#undef NS

// train.attention_backend: cudnn. Only the mixers' attention differs; KVM layers never call it.
// cuDNN's masks cannot express a block sliding window: those calls (window and block > 0) run the
// native kernels, forward and backward alike, so a layer's lse always meets the backward that made it.
bool block_window(int window, int block) {
  kernels::attention_check_window(window, block);
  return window > 0 && block > 0;
}
void cudnn_or_native_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH, int window,
                             int block) {
  if (block_window(window, block)) return kernels::cuda::attention_forward(out, lse, qkv, B, T, C, NH, window, block);
  kernels::cuda::cudnn_attention_forward(out, lse, qkv, B, T, C, NH, window);
}
void cudnn_or_native_backward(float* dqkv, const float* dout, const float* qkv, const float* out, const float* lse,
                              int B, int T, int C, int NH, int window, int block) {
  if (block_window(window, block))
    return kernels::cuda::attention_backward(dqkv, dout, qkv, out, lse, B, T, C, NH, window, block);
  kernels::cuda::cudnn_attention_backward(dqkv, dout, qkv, out, lse, B, T, C, NH, window);
}
const Backend kCudaCudnn = [] {
  Backend b = kCuda;
  b.attention_forward = cudnn_or_native_forward;
  b.attention_backward = cudnn_or_native_backward;
  return b;
}();
#endif

// The cuda table with `attention`'s kernels, on device device_index % (visible devices).
const Backend& cuda_backend(int device_index, Backend::Attention attention) {
#ifdef KVMTRAIN_HAS_CUDA
  const int n = kernels::cuda::device_count();
  if (n == 0) throw std::runtime_error("train.device: cuda but no CUDA device is visible (cudaGetDeviceCount found none)");
  cuda_check(cudaSetDevice(device_index % n));
  switch (attention) {
    case Backend::Attention::native: return kCuda;
    case Backend::Attention::cudnn: return kCudaCudnn;
  }
  unreachable();
#else
  throw std::runtime_error(
      "train.device: cuda but this kvmtrain was built without the CUDA backend (configure with -DKVMTRAIN_CUDA=ON)");
#endif
}

}  // namespace

const Backend& cpu_backend() { return kCpu; }

const Backend& backend_for(Backend::Device device, int device_index, Backend::Attention attention) {
  switch (device) {
    case Backend::Device::cpu:
      if (attention == Backend::Attention::cudnn)
        throw std::runtime_error("train.attention_backend: cudnn needs train.device: cuda");
      return kCpu;
    case Backend::Device::cuda: return cuda_backend(device_index, attention);
  }
  unreachable();
}
