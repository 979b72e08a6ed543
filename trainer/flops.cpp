#include "trainer/flops.h"

#include <cblas.h>
#include <sys/resource.h>

#include <chrono>
#include <vector>

double measure_sgemm_peak(int M, int N, int K, double seconds) {
  std::vector<float> a(size_t(M) * K, 0.5f), b(size_t(K) * N, 0.25f), c(size_t(M) * N);
  using clock = std::chrono::steady_clock;
  double best = 0;
  auto start = clock::now();
  for (int rep = 0; rep < 50; rep++) {
    auto t0 = clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a.data(), K, b.data(), K, 0.0f, c.data(), N);
    double dt = std::chrono::duration<double>(clock::now() - t0).count();
    double flops = 2.0 * M * N * K / dt;
    if (rep > 0 && flops > best) best = flops;  // the first run warms caches and threads
    if (rep >= 2 && std::chrono::duration<double>(clock::now() - start).count() > seconds) break;
  }
  return best;
}

long long peak_rss_bytes() {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return (long long)r.ru_maxrss * 1024;
}
