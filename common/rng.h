#pragma once
// Deterministic random numbers that do not depend on the C++ library: splitmix64 for bits,
// Box-Muller for normals. Used for initialisation and sampling.
#include <omp.h>

#include <cmath>
#include <cstdint>

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next_u64() {
    uint64_t z = (state_ += kGamma);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }
  double normal() {
    double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(2.0 * M_PI * u2);
  }
  uint64_t state() const { return state_; }
  // As `draws` calls of next_u64 would leave it: splitmix64's state moves by a constant per draw.
  void skip(uint64_t draws) { state_ += draws * kGamma; }

 private:
  static constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;  // the state's step per draw
  uint64_t state_;
};

// dst[i] = normal() * stddev for i < n, exactly as n calls of rng.normal() in a row would give
// (two draws each) and leaving rng where they would, but spread over the OpenMP threads, each
// starting from its own skip: GPT-2 124M's 124M normals took 5 s on one core.
inline void fill_normal(float* dst, size_t n, float stddev, Rng& rng) {
  const uint64_t start = rng.state();
#pragma omp parallel
  {
    const size_t threads = size_t(omp_get_num_threads()), t = size_t(omp_get_thread_num());
    const size_t begin = n * t / threads, end = n * (t + 1) / threads;
    Rng r(start);
    r.skip(2 * begin);
    for (size_t i = begin; i < end; i++) dst[i] = float(r.normal()) * stddev;
  }
  rng.skip(2 * n);
}
