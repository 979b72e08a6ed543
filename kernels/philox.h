#pragma once
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the
// generator of Random123, cuRAND and PyTorch's CUDA RNG): a counter-based generator, so the
// random bits of any element are a pure function of (key, counter), the same on every backend,
// rank and thread. Host and device.
#include <cstdint>

#if defined(__CUDACC__)
#define KVM_HOST_DEVICE __host__ __device__
#else
#define KVM_HOST_DEVICE
#endif

namespace kernels {

// The round multipliers and the key's per-round increments (Weyl sequence); the CPU's vectorised
// copy of the rounds (kernels/cpu/bf16.cpp) uses them too.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

struct Philox4x32 {
  uint32_t v[4];
};

KVM_HOST_DEVICE inline Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; round++) {
    uint64_t p0 = (uint64_t)kPhiloxM0 * ctr.v[0];
    uint64_t p1 = (uint64_t)kPhiloxM1 * ctr.v[2];
    ctr = Philox4x32{{(uint32_t)(p1 >> 32) ^ ctr.v[1] ^ k0, (uint32_t)p1, (uint32_t)(p0 >> 32) ^ ctr.v[3] ^ k1,
                      (uint32_t)p0}};
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return ctr;
}

}  // namespace kernels
