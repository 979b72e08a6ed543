#pragma once
// A zero-initialised float buffer on a 64-byte boundary (one cache line, one AVX-512 vector).
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t n) : n_(n) {
    size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    data_ = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
    if (!data_) throw std::bad_alloc();
    std::memset(data_, 0, n * sizeof(float));
  }
  AlignedBuffer(AlignedBuffer&& o) noexcept : data_(o.data_), n_(o.n_) { o.data_ = nullptr, o.n_ = 0; }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(n_, o.n_);
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }
  float* data() { return data_; }
  const float* data() const { return data_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(float); }
  void zero() { std::memset(data_, 0, n_ * sizeof(float)); }

 private:
  float* data_ = nullptr;
  size_t n_ = 0;
};
