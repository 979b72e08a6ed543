#pragma once
// bf16 (bfloat16) storage and the roundings of fp32 to it, shared by both backends (host and
// device). bf16 is the top 16 bits of an fp32: 8 exponent bits, 7 mantissa bits.
//  - nearest-even: for activations and gradients fed to a bf16 GEMM (as autocast does);
//  - stochastic: for the bf16 copy of the fp32 master weights, so that updates smaller than half
//    a bf16 ulp still move the weights on average. The 16 random bits of element i come from a
//    counter-based generator (kernels/philox.h) keyed by (seed, step, global index i), so the
//    copy does not depend on sharding, rank count or device, and is recomputable after resume.
#include <cstdint>
#include <cstring>

#include "kernels/philox.h"

namespace kernels {

struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2, "bf16 is 2 bytes, layout-compatible with __nv_bfloat16");

KVM_HOST_DEVICE inline uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

KVM_HOST_DEVICE inline float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

KVM_HOST_DEVICE inline float bf16_to_float(bf16 h) { return bits_float((uint32_t)h.bits << 16); }

KVM_HOST_DEVICE inline bool bits_nan(uint32_t u) { return (u & 0x7fffffffu) > 0x7f800000u; }

// Round to nearest, ties to even; NaN stays a (quiet) NaN, overflow goes to inf.
KVM_HOST_DEVICE inline bf16 bf16_round_nearest(float x) {
  uint32_t u = float_bits(x);
  if (bits_nan(u)) return bf16{(uint16_t)((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{(uint16_t)(u >> 16)};
}

// Round up in magnitude with probability (dropped bits)/2^16, given 16 uniform random bits r:
// unbiased, E[result] = x. NaN and inf are kept.
// Branch-free, so that CPU loops over it vectorise.
KVM_HOST_DEVICE inline bf16 bf16_round_stochastic_bits(float x, uint32_t r16) {
  const uint32_t u = float_bits(x);
  const uint32_t kept = (u >> 16) | (bits_nan(u) ? 0x40u : 0u);  // inf and NaN
  const uint32_t rounded = (u + (r16 & 0xffffu)) >> 16;
  return bf16{(uint16_t)((u & 0x7f800000u) == 0x7f800000u ? kept : rounded)};
}

// The 16 random bits of global element `index` at `step`. One Philox block (128 bits) serves 8
// elements: in each group of 128 consecutive indices, block 16*group + lane serves the elements
// lane, lane+16, ..., lane+112 (slot s = 0..7: word s/2, high half for odd s), so that a CPU
// vector of 16 lanes covers 16 consecutive elements.
KVM_HOST_DEVICE inline uint32_t stochastic_round_bits(uint64_t seed, uint64_t step, uint64_t index) {
  const uint64_t block = ((index >> 7) << 4) | (index & 15);
  const uint32_t slot = (uint32_t)(index >> 4) & 7;
  Philox4x32 r = philox4x32_10({(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)step, (uint32_t)(step >> 32)},
                               (uint32_t)seed, (uint32_t)(seed >> 32));
  const uint32_t word = r.v[slot >> 1];
  return (slot & 1) ? word >> 16 : word & 0xffffu;
}

}  // namespace kernels
