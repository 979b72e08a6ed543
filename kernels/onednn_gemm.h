#pragma once
// Row-major GEMM through oneDNN's matmul, the CPU backend's GEMM library (kernels/cpu/matmul.cpp,
// the MFU peak in trainer/model/flops.cpp). oneDNN picks its kernels from the CPU it runs on (its
// AVX-512 and AVX-512 BF16 brgemm here), where OpenBLAS is pinned to Haswell's AVX2 by the
// environment's OPENBLAS_CORETYPE; docs/perf-notebook.md has the measurements. Host code shared by
// several kernels, not a kernel.
#include <cstddef>

namespace kernels::onednn {

enum class Operands { f32, bf16 };  // A and B; C is always fp32, accumulation fp32

// C (M,N) = op(A) (M,K) @ op(B) (K,N) [+ bias (N)], or C += op(A) @ op(B) with accumulate.
// A is stored (M,K), or (K,M) with trans_a; B is stored (K,N), or (N,K) with trans_b; all dense
// row-major. Threads: oneDNN's OpenMP, as many as OMP_NUM_THREADS. Thread-safe.
void gemm(Operands t, bool trans_a, bool trans_b, int M, int N, int K, const void* A, const void* B,
          const float* bias, float* C, bool accumulate);

}  // namespace kernels::onednn
