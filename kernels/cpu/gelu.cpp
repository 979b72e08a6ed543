// GELU, the tanh approximation GPT-2 was trained with: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
#include <cmath>

#include "kernels/cpu/vecmath.h"
#include "kernels/kernels.h"

namespace kernels::cpu {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;
}  // namespace

void gelu_forward(float* out, const float* inp, int N) {
  // out, inp: (N)
#pragma omp parallel for simd schedule(static)
  for (int i = 0; i < N; i++) {
    float x = inp[i];
    out[i] = 0.5f * x * (1.0f + vtanh(kSqrt2OverPi * (x + kCubic * x * x * x)));
  }
}

void gelu_backward(float* dinp, const float* inp, const float* dout, int N) {
  // dinp (written; may be dout), inp, dout: (N)
#pragma omp parallel for simd schedule(static)
  for (int i = 0; i < N; i++) {
    float x = inp[i];
    float th = vtanh(kSqrt2OverPi * (x + kCubic * x * x * x));
    float dth = (1.0f - th * th) * kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
    dinp[i] = dout[i] * (0.5f * (1.0f + th) + 0.5f * x * dth);
  }
}

}  // namespace kernels::cpu
