#pragma once
// The small per-head products inside our OpenMP loops over (batch, head): attention's tiles and
// KVM's read-out and state scores. C (M,N) = alpha op(A) op(B) + beta C, row-major, on the
// calling thread. oneDNN's jit sgemm dispatches on the CPU (AVX-512 here, where OpenBLAS is
// pinned to AVX2 by OPENBLAS_CORETYPE) and runs serially inside a parallel region, so no thread
// pool fans out from each task; it halved attention's time against OpenBLAS.
#include <oneapi/dnnl/dnnl.h>

namespace kernels::cpu {

inline void serial_gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                        const float* B, int ldb, float beta, float* C, int ldc) {
  dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace kernels::cpu
