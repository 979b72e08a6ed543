// The bf16 copy of the fp32 master weights, rounded stochastically (kernels/bf16.h): Philox
// blocks serve 8 elements each, so the loop runs over whole blocks where it can.
#include "kernels/kernels.h"

namespace kernels::cpu {

void bf16_round_stochastic(bf16* out, const float* inp, size_t n, uint64_t seed, uint64_t step, uint64_t offset) {
  // out (n) bf16, inp (n) fp32; element i is global element offset + i
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++)
    out[i] = bf16_round_stochastic_bits(inp[i], stochastic_round_bits(seed, step, offset + i));
}

}  // namespace kernels::cpu
