// fill_orthogonal (common/orthogonal.h): orthonormal rows or columns times gain, the Q factor of
// the QR of fill_normal's Gaussian matrix with R's diagonal positive (torch.nn.init.orthogonal_'s
// rule), the same bits per seed whatever the thread count, and fast enough for GPT-2's embedding.
#include <gtest/gtest.h>
#include <omp.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <cstdio>
#include <vector>

#include "common/orthogonal.h"

namespace {

// Largest |(W W^T - gain^2 I)[a][b]| over the orthonormal side's pairs (rows when rows <= cols).
double orthonormality_error(const std::vector<float>& w, int rows, int cols, float gain) {
  const bool by_rows = rows <= cols;
  const int k = by_rows ? rows : cols, n = by_rows ? cols : rows;
  auto at = [&](int vec, int i) { return double(by_rows ? w[size_t(vec) * cols + i] : w[size_t(i) * cols + vec]); };
  double worst = 0;
  for (int a = 0; a < k; a++)
    for (int b = 0; b <= a; b++) {
      double dot = 0;
      for (int i = 0; i < n; i++) dot += at(a, i) * at(b, i);
      worst = std::max(worst, std::fabs(dot - (a == b ? double(gain) * gain : 0.0)));
    }
  return worst;
}

}  // namespace

TEST(FillOrthogonal, OrthonormalTimesGainBothOrientations) {
  struct Shape { int rows, cols; float gain; };
  for (Shape s : {Shape{5, 12, 1.0f}, Shape{12, 5, 1.0f}, Shape{1, 9, 0.5f}, Shape{9, 1, 0.5f}, Shape{7, 7, 1.0f},
                  Shape{64, 300, 2.0f}, Shape{300, 64, 2.0f}, Shape{256, 256, 1.0f}}) {
    SCOPED_TRACE(std::to_string(s.rows) + "x" + std::to_string(s.cols));
    std::vector<float> w(size_t(s.rows) * s.cols);
    Rng rng(7);
    fill_orthogonal(w.data(), s.rows, s.cols, s.gain, rng);
    EXPECT_LT(orthonormality_error(w, s.rows, s.cols, s.gain), 2e-6 * s.gain * s.gain);
  }
}

// W is Q of G = QR (G^T = QR when rows < cols) with diag(R) > 0: R = Q^T G is upper triangular
// with a positive diagonal, which pins Q down (torch's sign correction).
TEST(FillOrthogonal, IsTheSignCorrectedQOfTheGaussianMatrix) {
  for (auto [rows, cols] : {std::pair{40, 13}, std::pair{13, 40}, std::pair{24, 24}}) {
    SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols));
    const float gain = 3.0f;
    std::vector<float> w(size_t(rows) * cols), g(w.size());
    Rng a(11), b(11);
    fill_orthogonal(w.data(), rows, cols, gain, a);
    fill_normal(g.data(), g.size(), 1.0f, b);
    EXPECT_EQ(a.state(), b.state()) << "rng is left where fill_normal leaves it";
    const bool tall = rows >= cols;
    const int k = tall ? cols : rows, n = tall ? rows : cols;
    auto q = [&](int i, int j) { return double(tall ? w[size_t(i) * cols + j] : w[size_t(j) * cols + i]) / gain; };
    auto gm = [&](int i, int j) { return double(tall ? g[size_t(i) * cols + j] : g[size_t(j) * cols + i]); };
    for (int r = 0; r < k; r++)
      for (int c = 0; c < k; c++) {
        double x = 0;  // R[r][c] = (Q^T G)[r][c]
        for (int i = 0; i < n; i++) x += q(i, r) * gm(i, c);
        if (r > c) {
          EXPECT_NEAR(x, 0.0, 1e-5) << "R[" << r << "][" << c << "]";
        } else if (r == c) {
          EXPECT_GT(x, 0.1) << "R[" << r << "][" << r << "]";
        }
      }
  }
}

// Large enough for the widest projections to run on threads.
TEST(FillOrthogonal, SameBitsPerSeedOnAnyThreadCount) {
  for (auto [rows, cols] : {std::pair{8192, 128}, std::pair{128, 8192}, std::pair{1024, 1024}}) {
    std::vector<float> one(size_t(rows) * cols), two(one.size()), again(one.size()), other(one.size());
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    Rng r1(5), r3(6);
    fill_orthogonal(one.data(), rows, cols, 1.0f, r1);
    fill_orthogonal(other.data(), rows, cols, 1.0f, r3);
    omp_set_num_threads(2);
    Rng r2(5), r4(5);
    fill_orthogonal(two.data(), rows, cols, 1.0f, r2);
    fill_orthogonal(again.data(), rows, cols, 1.0f, r4);
    omp_set_num_threads(threads);
    EXPECT_EQ(one, two) << rows << "x" << cols;
    EXPECT_EQ(two, again) << rows << "x" << cols;
    EXPECT_NE(one, other) << rows << "x" << cols;
  }
}

// GPT-2's padded embedding: well under 10 s of processor time (summed over threads, so that other
// work on the machine does not count); orthonormality checked on a sample of columns against all
// of them (the whole W^T W would cost as much as the initialisation).
TEST(FillOrthogonal, Gpt2EmbeddingIsFast) {
  const int rows = 50304, cols = 768;
  std::vector<float> w(size_t(rows) * cols);
  Rng rng(1);
  const auto t0 = std::chrono::steady_clock::now();
  const std::clock_t c0 = std::clock();
  fill_orthogonal(w.data(), rows, cols, 1.0f, rng);
  const double cpu = double(std::clock() - c0) / CLOCKS_PER_SEC;
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("fill_orthogonal %dx%d: %.2f s (%.2f s of processor time) on %d threads\n", rows, cols, wall, cpu,
              omp_get_max_threads());
  EXPECT_LT(cpu, 10.0);
  const std::vector<int> sample{0, 1, 2, 383, 384, 700, 766, 767};
  std::vector<double> gram(sample.size() * cols, 0.0);
  for (int i = 0; i < rows; i++) {
    const float* row = &w[size_t(i) * cols];
    for (size_t a = 0; a < sample.size(); a++)
      for (int b = 0; b < cols; b++) gram[a * cols + b] += double(row[sample[a]]) * row[b];
  }
  double worst = 0;
  for (size_t a = 0; a < sample.size(); a++)
    for (int b = 0; b < cols; b++)
      worst = std::max(worst, std::fabs(gram[a * cols + b] - (b == sample[a] ? 1.0 : 0.0)));
  EXPECT_LT(worst, 2e-6);
}
