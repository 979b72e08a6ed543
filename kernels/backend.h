#pragma once
// The backend table: every kernel of kernels/kernels.h, the KVM entry points of kernels/kvm.h and
// the memory operations the trainer needs, as function pointers, so that the model, the optimizer
// and data parallelism are one code path for both backends. One indirect call per kernel launch.
// `cpu` works on host memory; `cuda` on device memory of the current CUDA device, kernels on the
// default stream (only built with the CUDA backend, KVMTRAIN_HAS_CUDA).
#include <cstddef>
#include <utility>

#include "kernels/kernels.h"
#include "kernels/kvm.h"

struct Backend {
  // What backend_for chooses between, in the kernels' own terms (they never see configs): the
  // device (train.device) and full and sliding-window attention's kernels (train.attention_backend).
  enum class Device { cpu, cuda };
  enum class Attention { native, cudnn };

  const char* name;  // "cpu" | "cuda": train.device
  bool host;         // its memory is host memory (readable in place)
#define KVM_BACKEND_MEMBER(ret, fn, params) ret(*fn) params;
  KVM_KERNELS_ALL_BACKENDS(KVM_BACKEND_MEMBER)
#undef KVM_BACKEND_MEMBER
  decltype(&kernels::cpu::kvm_forward) kvm_forward;
  decltype(&kernels::cpu::kvm_backward) kvm_backward;
  decltype(&kernels::cpu::kvm_decode_step) kvm_decode_step;
  decltype(&kernels::cpu::kvm_decode_init) kvm_decode_init;  // once per new KvmCache, before its first step
  // memory: zero-initialised allocations (64-byte aligned on the host), byte counts everywhere
  void* (*alloc)(size_t bytes);
  void (*free)(void* p);
  void (*zero)(void* p, size_t bytes);
  void (*copy)(void* dst, const void* src, size_t bytes);       // within the backend's memory
  void (*to_host)(void* host, const void* src, size_t bytes);   // waits for the kernels before it
  void (*from_host)(void* dst, const void* host, size_t bytes);
  // rows of `width` bytes, `rows` of them, at strides dpitch / spitch, within the backend's memory
  void (*copy_rows)(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t rows);
};

const Backend& cpu_backend();

// The sum of squares of g's n elements (global_norm_squared over the one range [0, n)).
inline double norm_squared(const Backend& be, const float* g, size_t n) {
  const kernels::IndexRange all{0, n};
  return be.global_norm_squared(g, &all, 1);
}
// The table of `device`. Throws std::runtime_error with one line when cuda is asked for but not
// built in, or no CUDA device is visible. With cuda, device_index % (visible devices) becomes the
// current device (a process per GPU: pass the rank's local index).
// attention: native, the backend's own attention kernels, or cudnn (cuda only): the cuda table
// with attention_forward / attention_backward, full and sliding-window attention, through cuDNN's
// fused flash attention (kernels/cuda/cudnn_attention.h); block sliding windows, which cuDNN cannot
// mask, through the native cuda kernels.
const Backend& backend_for(Backend::Device device, int device_index = 0,
                           Backend::Attention attention = Backend::Attention::native);

// A zero-initialised float buffer in a backend's memory, freed with it.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const Backend& be, size_t n)
      : be_(&be), data_(static_cast<float*>(be.alloc(n * sizeof(float)))), n_(n) {}
  DeviceBuffer(DeviceBuffer&& o) noexcept : be_(o.be_), data_(o.data_), n_(o.n_) { o.data_ = nullptr, o.n_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(be_, o.be_);
    std::swap(data_, o.data_);
    std::swap(n_, o.n_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (data_) be_->free(data_);
  }
  float* data() { return data_; }
  const float* data() const { return data_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(float); }
  void zero() {
    if (n_) be_->zero(data_, bytes());
  }

 private:
  const Backend* be_ = nullptr;
  float* data_ = nullptr;
  size_t n_ = 0;
};
