// Partial RoPE on interleaved pairs, the CUDA twin of kernels/cpu/rope.cpp: one thread per
// rotated pair (2i, 2i+1) or per passed-through dim of [R,hs), so out may equal inp. As on the
// CPU, the angle, cosine and sine are computed in double and rounded to float, and the paper's
// variant is kvmtrain's rotation with the sine negated.
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

// Forward: out = rotated inp. Backward: out += the inverse rotation (the transpose) of inp.
template <bool kBackward>
__global__ void rope_kernel(float* out, const float* inp, int B, int T, int NH, int hs, int ld, int R, float base,
                            int pos0, RopeVariant variant) {
  const int P = R / 2;
  const int per_head = P + (hs - R);  // pairs, then passed-through dims
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t total = (size_t)B * T * NH * per_head;
  if (idx >= total) return;
  int j = (int)(idx % per_head);
  int h = (int)((idx / per_head) % NH);
  size_t bt = idx / ((size_t)per_head * NH);
  int t = (int)(bt % T);
  size_t off = bt * ld + (size_t)h * hs;
  const float* x = inp + off;
  float* o = out + off;
  if (j < P) {
    double freq = pow((double)base, rope_exponent(j, R, variant));
    double a = (double)(pos0 + t) * freq;
    float c = (float)cos(a), s = variant == RopeVariant::paper ? -(float)sin(a) : (float)sin(a);
    float x0 = x[2 * j], x1 = x[2 * j + 1];
    if (kBackward) {
      o[2 * j] += x0 * c + x1 * s;
      o[2 * j + 1] += -x0 * s + x1 * c;
    } else {
      o[2 * j] = x0 * c - x1 * s;
      o[2 * j + 1] = x0 * s + x1 * c;
    }
  } else {
    int d = R + (j - P);
    if (kBackward) o[d] += x[d];
    else o[d] = x[d];
  }
}

template <bool kBackward>
void rope_launch(float* out, const float* inp, int B, int T, int NH, int hs, int ld, int R, float base, int pos0,
                 RopeVariant variant) {
  size_t total = (size_t)B * T * NH * (R / 2 + (hs - R));
  if (total == 0) return;
  launch(rope_kernel<kBackward>, blocks_for(total), kThreads, 0, out, inp, B, T, NH, hs, ld, R, base, pos0, variant);
}

}  // namespace

void rope_forward(float* out, const float* inp, int B, int T, int NH, int hs, int ld, int R, float base, int pos0,
                  RopeVariant variant) {
  // out, inp: token (b,t) holds NH heads of hs floats from ptr + (b*T+t)*ld; device
  rope_launch<false>(out, inp, B, T, NH, hs, ld, R, base, pos0, variant);
}

void rope_backward(float* dinp, const float* dout, int B, int T, int NH, int hs, int ld, int R, float base,
                   int pos0, RopeVariant variant) {
  // dinp (accumulated; != dout), dout: as rope_forward; device
  rope_launch<true>(dinp, dout, B, T, NH, hs, ld, R, base, pos0, variant);
}

}  // namespace kernels::cuda
