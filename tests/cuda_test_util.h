#pragma once
// Device buffers for the CUDA tests: a device copy of a host vector, copied back with host().
#include <algorithm>
#include <vector>

#include "kernels/cuda/cuda_check.cuh"

namespace test_util {

template <class T>
class DeviceBuf {
 public:
  explicit DeviceBuf(const std::vector<T>& h) : n_(h.size()) {
    cuda_check(cudaMalloc(&p_, std::max<size_t>(n_, 1) * sizeof(T)));
    cuda_check(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
  ~DeviceBuf() { cudaFree(p_); }
  T* get() { return p_; }
  std::vector<T> host() const {
    std::vector<T> h(n_);
    cuda_check(cudaDeviceSynchronize());  // surface asynchronous kernel faults here, named
    cuda_check(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};
using DeviceVec = DeviceBuf<float>;
using DeviceInts = DeviceBuf<int>;

}  // namespace test_util
