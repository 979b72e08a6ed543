#pragma once
// The fp32 GEMM peak that MFU is measured against: the GEMM library kvmtrain uses (OpenBLAS
// sgemm), timed on this machine at GPT-2 124M's MLP shape (M x 3072 x 768), under the
// environment's settings.
// Returns FLOP/s (2 per multiply-add), the best of repeated runs within `seconds`.
double measure_sgemm_peak(int M, int N, int K, double seconds);
// Peak resident memory of this process, bytes.
long long peak_rss_bytes();
