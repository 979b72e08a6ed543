// A sub-block's output added to the residual stream with a scale (model.residual_scale).
#include "kernels/kernels.h"

namespace kernels::cpu {

void scaled_residual_forward(float* out, const float* inp1, const float* inp2, float scale, int N) {
  // out, inp1, inp2: (N); out may equal inp1 or inp2
#pragma omp parallel for simd schedule(static)
  for (int i = 0; i < N; i++) out[i] = inp1[i] + scale * inp2[i];
}

}  // namespace kernels::cpu
