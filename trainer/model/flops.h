#pragma once
// The GEMM peak that MFU is measured against: the backend's own matmul_forward and
// matmul_backward (bf16: their _bf16 twins), i.e. the GEMM library kvmtrain uses there (oneDNN on
// cpu, cuBLASLt on cuda), timed on this machine at GPT-2 124M's MLP shape (M x 3072 x 768 for
// M x N x K) under the environment's settings; the faster of the forward product and the
// backward's pair. OpenBLAS's sgemm peak (under the environment's OPENBLAS_CORETYPE) is
// measured beside it for reference.
// Each returns FLOP/s (2 per multiply-add), the best of repeated runs within `seconds` in all.
struct Backend;
double measure_gemm_peak(const Backend& be, bool bf16, int M, int N, int K, double seconds);
double measure_openblas_sgemm_peak(int M, int N, int K, double seconds);
// Peak resident memory of this process, bytes.
long long peak_rss_bytes();
