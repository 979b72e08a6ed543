// The bf16 copy of the fp32 master weights, rounded stochastically (kernels/bf16.h). A group of
// 128 consecutive elements takes its random bits from 16 Philox blocks, generated together in
// lane arrays so that the compiler vectorises the 32x32->64 multiplies (vpmuludq); element
// lane + 16*slot uses lane `lane`, so both loops run over 16 contiguous lanes.
#include <algorithm>

#include "kernels/kernels.h"

namespace kernels::cpu {

namespace {

constexpr int kLanes = 16;             // Philox blocks generated together
constexpr size_t kGroup = 8 * kLanes;  // elements they serve

// words[w][lane]: word w of Philox block first + lane, as philox4x32_10 gives it.
void philox_lanes(uint32_t words[4][kLanes], uint64_t first, uint64_t seed, uint64_t step) {
  uint32_t* c0 = words[0];
  uint32_t* c1 = words[1];
  uint32_t* c2 = words[2];
  uint32_t* c3 = words[3];
  for (int l = 0; l < kLanes; l++) {
    const uint64_t block = first + uint64_t(l);
    c0[l] = uint32_t(block), c1[l] = uint32_t(block >> 32), c2[l] = uint32_t(step), c3[l] = uint32_t(step >> 32);
  }
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; round++) {
#pragma omp simd
    for (int l = 0; l < kLanes; l++) {
      const uint64_t p0 = uint64_t(0xD2511F53u) * c0[l], p1 = uint64_t(0xCD9E8D57u) * c2[l];
      const uint32_t n0 = uint32_t(p1 >> 32) ^ c1[l] ^ k0, n2 = uint32_t(p0 >> 32) ^ c3[l] ^ k1;
      c1[l] = uint32_t(p1), c3[l] = uint32_t(p0), c0[l] = n0, c2[l] = n2;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

}  // namespace

void bf16_round_stochastic(bf16* out, const float* inp, size_t n, uint64_t seed, uint64_t step, uint64_t offset) {
  // out (n) bf16, inp (n) fp32; element i is global element offset + i
  // elements outside whole groups of global indices, one at a time
  const size_t head = std::min(n, size_t((kGroup - offset % kGroup) % kGroup));
  const size_t groups = (n - head) / kGroup, body_end = head + groups * kGroup;
  auto one = [&](size_t i) {
    out[i] = bf16_round_stochastic_bits(inp[i], stochastic_round_bits(seed, step, offset + i));
  };
  for (size_t i = 0; i < head; i++) one(i);
  for (size_t i = body_end; i < n; i++) one(i);
#pragma omp parallel for schedule(static)
  for (size_t g = 0; g < groups; g++) {
    const size_t i0 = head + g * kGroup;
    uint32_t words[4][kLanes];
    philox_lanes(words, (offset + i0) / kGroup * kLanes, seed, step);
    for (int slot = 0; slot < 8; slot++) {
      const uint32_t* w = words[slot >> 1];
      const int shift = (slot & 1) * 16;
      const float* x = inp + i0 + slot * kLanes;
      bf16* o = out + i0 + slot * kLanes;
#pragma omp simd
      for (int l = 0; l < kLanes; l++) o[l] = bf16_round_stochastic_bits(x[l], w[l] >> shift);
    }
  }
}

}  // namespace kernels::cpu
