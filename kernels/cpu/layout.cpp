// Data movement between the trainer's layouts: token rows <-> per-head (B,NH,T,hs) for the KVM core,
// and an axpby over strided rows (the value residual works on the v columns of qkv rows).
#include <cstring>

#include "kernels/kernels.h"

namespace kernels::cpu {

void split_heads(float* out, const float* inp, int B, int T, int NH, int hs, int ld) {
  // out (B,NH,T,hs); inp (B,T) rows of stride ld, head h at columns [h*hs, (h+1)*hs)
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++)
      for (int t = 0; t < T; t++)
        std::memcpy(out + ((size_t(b) * NH + h) * T + t) * hs, inp + (size_t(b) * T + t) * ld + size_t(h) * hs,
                    hs * sizeof(float));
}

void merge_heads(float* out, const float* inp, int B, int T, int NH, int hs, int ld, int accumulate) {
  // out (B,T) rows of stride ld (accumulated when asked); inp (B,NH,T,hs)
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      for (int h = 0; h < NH; h++) {
        const float* src = inp + ((size_t(b) * NH + h) * T + t) * hs;
        float* dst = out + (size_t(b) * T + t) * ld + size_t(h) * hs;
        if (accumulate) {
          for (int d = 0; d < hs; d++) dst[d] += src[d];
        } else {
          std::memcpy(dst, src, hs * sizeof(float));
        }
      }
}

void axpby_rows(float* out, const float* inp, float a, float b, size_t N, int C, size_t ldo, size_t ldi) {
  // out (N rows of C at stride ldo); inp (N rows of C at stride ldi, or one row when ldi is 0)
  if (ldo == size_t(C) && ldi == size_t(C)) {  // contiguous: one flat vectorised loop
    const size_t n = N * size_t(C);
    if (a == 0.0f) {
#pragma omp parallel for simd schedule(static)
      for (size_t i = 0; i < n; i++) out[i] = b * inp[i];
    } else {
#pragma omp parallel for simd schedule(static)
      for (size_t i = 0; i < n; i++) out[i] = a * out[i] + b * inp[i];
    }
    return;
  }
#pragma omp parallel for schedule(static)
  for (size_t r = 0; r < N; r++) {
    float* o = out + r * ldo;
    const float* x = inp + r * ldi;
    if (a == 0.0f) {
      for (int c = 0; c < C; c++) o[c] = b * x[c];
    } else {
      for (int c = 0; c < C; c++) o[c] = a * o[c] + b * x[c];
    }
  }
}

}  // namespace kernels::cpu
