#include "trainer/model/flops.h"

#include <cblas.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/backend.h"

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

double measure_gemm_peak(const Backend& be, bool bf16, int M, int N, int K, double seconds) {
  // zero operands: the GEMM kernels take the same time whatever the values (no denormals); the
  // bf16 weight is the first half of w's zeros
  DeviceBuffer a(be, size_t(M) * K), w(be, size_t(N) * K), c(be, size_t(M) * N), da(be, size_t(M) * K),
      dw(be, size_t(N) * K);
  const auto* w_bf16 = reinterpret_cast<const kernels::bf16*>(w.data());
  float done;
  auto wait = [&] { be.to_host(&done, c.data(), sizeof done); };  // waits for the device
  const double forward = best_flops(M, N, K, seconds / 2, [&] {
    if (bf16) be.matmul_forward_bf16(c.data(), a.data(), w_bf16, nullptr, M, K, N);
    else be.matmul_forward(c.data(), a.data(), w.data(), nullptr, M, K, N);
    wait();
  });
  // The backward's two products (dinp, dweight) at the same shape may run on other kernels
  // (kernels/onednn_gemm.cpp picks per layout): the peak is the faster of the two passes. Both
  // gradients are overwritten, their faster form, as a step's first micro-step writes the weight
  // gradients and a block's backward the activation gradients with one producer.
  const double backward = 2 * best_flops(M, N, K, seconds / 2, [&] {
    if (bf16) be.matmul_backward_bf16(da.data(), dw.data(), nullptr, c.data(), a.data(), w_bf16, M, K, N, false, false);
    else be.matmul_backward(da.data(), dw.data(), nullptr, c.data(), a.data(), w.data(), M, K, N, false, false);
    wait();
  });
  return std::max(forward, backward);
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
