// Residual connection: the sum of two streams; its backward hands dout to both.
#include "kernels/kernels.h"

namespace kernels::cpu {

void residual_forward(float* out, const float* inp1, const float* inp2, int N) {
  // out, inp1, inp2: (N)
#pragma omp parallel for simd schedule(static)
  for (int i = 0; i < N; i++) out[i] = inp1[i] + inp2[i];
}

void residual_backward(float* dinp1, float* dinp2, const float* dout, int N) {
  // dinp1, dinp2 (accumulated), dout: (N)
#pragma omp parallel for simd schedule(static)
  for (int i = 0; i < N; i++) {
    dinp1[i] += dout[i];
    dinp2[i] += dout[i];
  }
}

}  // namespace kernels::cpu
