// Partial rotary position embedding on interleaved pairs (docs/kvm.md section 12): for i < R/2 the
// pair (2i, 2i+1) of every head turns by (pos0+t) * base^rope_exponent(i, R, variant), one way
// (kvmtrain) or the other (paper); dims [R,hs) pass through. The angles, cosines and sines are
// computed in double, then rounded to float. The paper's rotation by a is kvmtrain's by -a, so it
// runs as kvmtrain's with the sines negated.
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"

namespace kernels::cpu {

namespace {

// cos and sin (T, R/2) of positions pos0 .. pos0+T-1, the sines negated for the paper's rotation
void rope_table(std::vector<float>& cs, std::vector<float>& sn, int T, int R, float base, int pos0,
                RopeVariant variant) {
  const int P = R / 2;
  cs.resize((size_t)T * P);
  sn.resize((size_t)T * P);
  for (int i = 0; i < P; i++) {
    double freq = std::pow((double)base, rope_exponent(i, R, variant));
    for (int t = 0; t < T; t++) {
      double a = (double)(pos0 + t) * freq;
      cs[(size_t)t * P + i] = (float)std::cos(a);
      sn[(size_t)t * P + i] = variant == RopeVariant::paper ? -(float)std::sin(a) : (float)std::sin(a);
    }
  }
}

// Forward: out = rotated inp. Backward: out += the inverse rotation (the transpose) of inp.
template <bool kBackward>
void rope_apply(float* out, const float* inp, int B, int T, int NH, int hs, int ld, int R, float base, int pos0,
                RopeVariant variant) {
  std::vector<float> cs, sn;
  rope_table(cs, sn, T, R, base, pos0, variant);
  const int P = R / 2;
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++) {
    for (int t = 0; t < T; t++) {
      const float* c = cs.data() + (size_t)t * P;
      const float* s = sn.data() + (size_t)t * P;
      for (int h = 0; h < NH; h++) {
        size_t off = ((size_t)b * T + t) * ld + (size_t)h * hs;
        const float* x = inp + off;
        float* o = out + off;
        for (int i = 0; i < P; i++) {
          float x0 = x[2 * i], x1 = x[2 * i + 1];
          if (kBackward) {
            o[2 * i] += x0 * c[i] + x1 * s[i];
            o[2 * i + 1] += -x0 * s[i] + x1 * c[i];
          } else {
            o[2 * i] = x0 * c[i] - x1 * s[i];
            o[2 * i + 1] = x0 * s[i] + x1 * c[i];
          }
        }
        for (int d = R; d < hs; d++) {
          if (kBackward) o[d] += x[d];
          else o[d] = x[d];
        }
      }
    }
  }
}

}  // namespace

void rope_forward(float* out, const float* inp, int B, int T, int NH, int hs, int ld, int R, float base, int pos0,
                  RopeVariant variant) {
  rope_apply<false>(out, inp, B, T, NH, hs, ld, R, base, pos0, variant);
}

void rope_backward(float* dinp, const float* dout, int B, int T, int NH, int hs, int ld, int R, float base,
                   int pos0, RopeVariant variant) {
  rope_apply<true>(dinp, dout, B, T, NH, hs, ld, R, base, pos0, variant);
}

}  // namespace kernels::cpu
