#include "common/orthogonal.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

// Gram-Schmidt on the k vectors to orthonormalise, each n doubles contiguous. Its R has a positive
// diagonal (the lengths), so its Q is the sign-corrected factor itself. The columns are split in
// halves recursively (block Gram-Schmidt): nearly all the work is projecting a block of columns
// against the block before it, two cache-blocked kernels over chunks of rows; the halving keeps
// the earlier block as wide as the later one, so each chunk of it is reused across many columns.
// A 50304 x 768 matrix is 3e10 multiply-adds.

namespace {

constexpr size_t kChunk = 256;  // rows per chunk: a chunk of a 384-column block is 768 KiB (L2)
// Threads only for projections of at least this many multiply-adds: a parallel region ends in a
// barrier, slow where another process holds a core, and the deep levels hold hundreds of small ones.
constexpr size_t kParallelWork = size_t(1) << 24;

struct Columns {
  double* data;
  size_t n;  // length of each column
  double* col(int j) const { return data + size_t(j) * n; }
};

// Calls f.operator()<W>(i) for tiles [i, i+W) of [0, n): W = 4, then W = 1 for the rest.
template <class F>
void for_tiles(int n, F&& f) {
  int i = 0;
  for (; i + 4 <= n; i += 4) f.template operator()<4>(i);
  for (; i < n; i++) f.template operator()<1>(i);
}

// Eight doubles in a vector register (or two, or four, whatever the target has): the tiles below
// hold their accumulators and broadcasts in these, so they stay in registers.
typedef double v8d __attribute__((vector_size(64)));
inline v8d load(const double* p) {
  v8d x;
  __builtin_memcpy(&x, p, sizeof x);
  return x;
}
inline void store(double* p, v8d x) { __builtin_memcpy(p, &x, sizeof x); }

// s[a][b] += sum_i q_a[i] p_b[i] over len rows; vectors ld apart, s rows lds apart. The order of
// summation is fixed: eight lanes, then the lanes in order.
template <int QW, int PW>
void dot_tile(const double* q, const double* p, size_t ld, size_t len, double* s, size_t lds) {
  v8d acc[QW][PW] = {};
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    v8d qv[QW], pv[PW];
    for (int a = 0; a < QW; a++) qv[a] = load(q + a * ld + i);
    for (int b = 0; b < PW; b++) pv[b] = load(p + b * ld + i);
    for (int a = 0; a < QW; a++)
      for (int b = 0; b < PW; b++) acc[a][b] += qv[a] * pv[b];
  }
  for (; i < len; i++)
    for (int a = 0; a < QW; a++)
      for (int b = 0; b < PW; b++) acc[a][b][0] += q[a * ld + i] * p[b * ld + i];
  for (int a = 0; a < QW; a++)
    for (int b = 0; b < PW; b++) {
      double x = 0;
      for (int l = 0; l < 8; l++) x += acc[a][b][l];
      s[a * lds + b] += x;
    }
}

// p_b[i] -= sum_a q_a[i] s[a][b] over len rows.
template <int QW, int PW>
void update_tile(const double* q, double* p, size_t ld, size_t len, const double* s, size_t lds) {
  v8d sv[QW][PW];
  for (int a = 0; a < QW; a++)
    for (int b = 0; b < PW; b++) sv[a][b] = v8d{} + s[a * lds + b];
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    v8d qv[QW];
    for (int a = 0; a < QW; a++) qv[a] = load(q + a * ld + i);
    for (int b = 0; b < PW; b++) {
      v8d x = load(p + b * ld + i);
      for (int a = 0; a < QW; a++) x -= qv[a] * sv[a][b];
      store(p + b * ld + i, x);
    }
  }
  for (; i < len; i++)
    for (int b = 0; b < PW; b++) {
      double x = p[b * ld + i];
      for (int a = 0; a < QW; a++) x -= q[a * ld + i] * sv[a][b][0];
      p[b * ld + i] = x;
    }
}

// One classical Gram-Schmidt pass of columns [p0, p1) against the orthonormal columns [q0, q1):
// P -= Q (Q^T P). s: scratch.
void project(const Columns& v, int q0, int q1, int p0, int p1, std::vector<double>& s) {
  const int nq = q1 - q0, np = p1 - p0;
  if (nq == 0) return;
  const size_t n = v.n, chunks = (n + kChunk - 1) / kChunk;
  s.assign(size_t(nq) * np, 0.0);
  const bool threads = size_t(nq) * size_t(np) * n >= kParallelWork;
  // S = Q^T P: a thread owns whole rows of S and sums each over the chunks in order (the bits do
  // not depend on the thread count); P's chunk stays in cache across the thread's tiles of Q.
#pragma omp parallel if (threads)
  {
    const int count = omp_get_num_threads(), t = omp_get_thread_num(), tiles = (nq + 3) / 4;
    const int a0 = 4 * (tiles * t / count), a1 = std::min(nq, 4 * (tiles * (t + 1) / count));
    for (size_t c = 0; c < chunks; c++) {
      const size_t i0 = c * kChunk, len = std::min(kChunk, n - i0);
      for_tiles(a1 - a0, [&]<int QW>(int a) {
        for_tiles(np, [&]<int PW>(int b) {
          dot_tile<QW, PW>(v.col(q0 + a0 + a) + i0, v.col(p0 + b) + i0, n, len, &s[size_t(a0 + a) * np + b], np);
        });
      });
    }
  }
  // P -= Q S: a thread owns whole chunks of rows.
#pragma omp parallel for schedule(static) if (threads)
  for (size_t c = 0; c < chunks; c++) {
    const size_t i0 = c * kChunk, len = std::min(kChunk, n - i0);
    for_tiles(np, [&]<int PW>(int b) {
      for_tiles(nq, [&]<int QW>(int a) {
        update_tile<QW, PW>(v.col(q0 + a) + i0, v.col(p0 + b) + i0, n, len, &s[size_t(a) * np + b], np);
      });
    });
  }
}

double norm(const double* x, size_t n) {
  double acc[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; l++) acc[l] += x[i + l] * x[i + l];
  for (; i < n; i++) acc[0] += x[i] * x[i];
  double sum = 0;
  for (double a : acc) sum += a;
  return std::sqrt(sum);
}

// Orthonormalises columns [lo, hi), already projected against columns [0, lo). length0: each
// column's length before any projection.
void orthonormalise(const Columns& v, int lo, int hi, const std::vector<double>& length0, std::vector<double>& s) {
  if (hi - lo > 1) {
    const int mid = lo + (hi - lo) / 2;
    orthonormalise(v, lo, mid, length0, s);
    project(v, lo, mid, mid, hi, s);
    orthonormalise(v, mid, hi, length0, s);
    return;
  }
  double* x = v.col(lo);
  double len = norm(x, v.n);
  // "Twice is enough" (Kahan): a column that kept less than 1/sqrt2 of its length may keep rounding
  // errors along the earlier columns that are large next to what is left; one more pass removes
  // them. Tall Gaussian matrices never need it; square ones do for their later columns.
  if (len < length0[lo] * M_SQRT1_2) {
    project(v, 0, lo, lo, lo + 1, s);
    len = norm(x, v.n);
  }
  const double inv = 1.0 / len;
  for (size_t i = 0; i < v.n; i++) x[i] *= inv;
}

}  // namespace

void fill_orthogonal(float* dst, int rows, int cols, float gain, Rng& rng) {
  fill_normal(dst, size_t(rows) * size_t(cols), 1.0f, rng);
  if (rows == 0 || cols == 0) return;
  // rows >= cols: QR of the Gaussian matrix G, its columns are the vectors (a transpose in and out);
  // rows < cols: QR of G^T, whose columns are G's rows.
  const bool tall = rows >= cols;
  const int k = tall ? cols : rows;
  const size_t n = size_t(tall ? rows : cols);
  std::vector<double> data(size_t(k) * n);
  const Columns v{data.data(), n};
  constexpr size_t kTile = 64;  // transposes in square tiles
#pragma omp parallel for schedule(static)
  for (size_t i0 = 0; i0 < n; i0 += kTile)
    for (size_t j0 = 0; j0 < size_t(k); j0 += kTile)
      for (size_t j = j0; j < std::min(j0 + kTile, size_t(k)); j++)
        for (size_t i = i0; i < std::min(i0 + kTile, n); i++) data[j * n + i] = tall ? dst[i * k + j] : dst[j * n + i];

  std::vector<double> length0(k), s;
#pragma omp parallel for schedule(static)
  for (int j = 0; j < k; j++) length0[j] = norm(v.col(j), n);
  orthonormalise(v, 0, k, length0, s);

#pragma omp parallel for schedule(static)
  for (size_t i0 = 0; i0 < n; i0 += kTile)
    for (size_t j0 = 0; j0 < size_t(k); j0 += kTile)
      for (size_t i = i0; i < std::min(i0 + kTile, n); i++)
        for (size_t j = j0; j < std::min(j0 + kTile, size_t(k)); j++)
          (tall ? dst[i * k + j] : dst[j * n + i]) = float(data[j * n + i] * gain);
}
