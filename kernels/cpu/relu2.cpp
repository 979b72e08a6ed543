// Squared ReLU, the paper's MLP activation: relu(x)^2, derivative 2 relu(x).
#include "kernels/kernels.h"

namespace kernels::cpu {

void relu2_forward(float* out, const float* inp, int N) {
  // out, inp: (N)
#pragma omp parallel for simd schedule(static)
  for (int i = 0; i < N; i++) {
    float r = inp[i] > 0.0f ? inp[i] : 0.0f;
    out[i] = r * r;
  }
}

void relu2_backward(float* dinp, const float* inp, const float* dout, int N) {
  // dinp (written; may be dout), inp, dout: (N)
#pragma omp parallel for simd schedule(static)
  for (int i = 0; i < N; i++) {
    float r = inp[i] > 0.0f ? inp[i] : 0.0f;
    dinp[i] = 2.0f * r * dout[i];
  }
}

}  // namespace kernels::cpu
