#include "trainer/flops.h"

#include <cblas.h>
#include <sys/resource.h>

#include <chrono>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/onednn_gemm.h"

namespace {

// The best FLOP/s of `gemm` (an M x N x K product) over repeated runs within `seconds`.
template <class F>
double best_flops(int M, int N, int K, double seconds, F gemm) {
  using clock = std::chrono::steady_clock;
  double best = 0;
  auto start = clock::now();
  for (int rep = 0; rep < 50; rep++) {
    auto t0 = clock::now();
    gemm();
    double dt = std::chrono::duration<double>(clock::now() - t0).count();
    double flops = 2.0 * M * N * K / dt;
    if (rep > 0 && flops > best) best = flops;  // the first run warms caches and threads
    if (rep >= 2 && std::chrono::duration<double>(clock::now() - start).count() > seconds) break;
  }
  return best;
}

}  // namespace

double measure_gemm_peak(bool bf16, int M, int N, int K, double seconds) {
  using kernels::onednn::Operands;
  std::vector<float> a(size_t(M) * K, 0.5f), b(size_t(N) * K, 0.25f), c(size_t(M) * N);
  std::vector<kernels::bf16> a16(a.size(), kernels::bf16_round_nearest(0.5f)), b16(b.size(), kernels::bf16_round_nearest(0.25f));
  const void* A = bf16 ? (const void*)a16.data() : a.data();
  const void* B = bf16 ? (const void*)b16.data() : b.data();
  return best_flops(M, N, K, seconds, [&] {
    kernels::onednn::gemm(bf16 ? Operands::bf16 : Operands::f32, false, true, M, N, K, A, B, nullptr, c.data(), false);
  });
}

double measure_openblas_sgemm_peak(int M, int N, int K, double seconds) {
  std::vector<float> a(size_t(M) * K, 0.5f), b(size_t(K) * N, 0.25f), c(size_t(M) * N);
  return best_flops(M, N, K, seconds, [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a.data(), K, b.data(), K, 0.0f, c.data(), N);
  });
}

long long peak_rss_bytes() {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return (long long)r.ru_maxrss * 1024;
}
