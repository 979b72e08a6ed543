// The KVM merge gate g = 1 + elu(x) (docs/kvm.md section 4): positive, 1 at x = 0.
#include <cmath>

#include "kernels/kernels.h"

namespace kernels::cpu {

void elu_gate_forward(float* out, const float* inp, int N) {
  // out, inp: (N)
  for (int i = 0; i < N; i++) out[i] = inp[i] > 0.0f ? 1.0f + inp[i] : std::exp(inp[i]);
}

void elu_gate_backward(float* dinp, const float* inp, const float* dout, int N) {
  // dinp (accumulated), inp, dout: (N)
  for (int i = 0; i < N; i++) dinp[i] += dout[i] * (inp[i] > 0.0f ? 1.0f : std::exp(inp[i]));
}

}  // namespace kernels::cpu
