#pragma once
// exp and tanh written in plain arithmetic so that `#pragma omp simd` loops vectorise them (to
// AVX-512 with -march=native): glibc only offers vector expf under -ffast-math, and a scalar
// libm call per element would cost more than the GEMMs around the softmax and the GELU.
#include <bit>
#include <cmath>
#include <cstdint>

namespace kernels::cpu {

// exp(x) within 2 ulp (Cephes' polynomial on [-ln2/2, ln2/2]); exactly 0 below -87.3 (so -inf
// from a mask gives 0), +inf above 88.3 (2^n must stay a normal float).
inline float vexp(float x) {
  float xc = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);  // std::fmin/fmax do not vectorise
  float n = std::rint(xc * 1.44269504088896341f);
  float r = xc - n * 0.693359375f;  // ln2 split in two: n*0.693359375 is exact
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  float y = p * scale;
  return x < -87.3f ? 0.0f : (x > 88.3f ? INFINITY : y);
}

// tanh(x) = 1 - 2/(exp(2x)+1): absolute error ~1e-7, which is what GELU needs (it uses 1+tanh).
inline float vtanh(float x) { return 1.0f - 2.0f / (vexp(2.0f * x) + 1.0f); }

}  // namespace kernels::cpu
