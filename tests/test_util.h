#pragma once
// Helpers shared by the test files: run the kvmtrain binary as a user would, read a file whole,
// compare vectors element by element, check gradients against finite differences.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace test_util {

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

struct CliResult {
  int status;
  std::string out, err;
};

// Runs `launcher $KVMTRAIN_BIN args` (shell words), capturing stdout and stderr in `dir`.
inline CliResult kvmtrain_under(const std::string& launcher, const std::string& args, const std::filesystem::path& dir) {
  const char* bin = std::getenv("KVMTRAIN_BIN");
  std::string cmd = launcher + " " + std::string(bin ? bin : "kvmtrain") + " " + args + " >" + (dir / "stdout").string() +
                    " 2>" + (dir / "stderr").string();
  int st = std::system(cmd.c_str());
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, slurp(dir / "stdout"), slurp(dir / "stderr")};
}

// Runs `$KVMTRAIN_BIN args` (args are shell words), capturing stdout and stderr in `dir`.
inline CliResult kvmtrain(const std::string& args, const std::filesystem::path& dir) { return kvmtrain_under("", args, dir); }

// The same under `$KVMTRAIN_MPIEXEC -np ranks` (the job's exit status: non-zero if any rank failed).
inline CliResult kvmtrain_mpi(int ranks, const std::string& args, const std::filesystem::path& dir) {
  const char* mpiexec = std::getenv("KVMTRAIN_MPIEXEC");
  return kvmtrain_under(std::string(mpiexec ? mpiexec : "mpiexec") + " -np " + std::to_string(ranks), args, dir);
}

// Random normal floats from a fixed seed, a double copy, and the double dot product a . w: the
// pieces of the finite-difference checks.
inline std::vector<float> randn(size_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

inline double dot(const std::vector<double>& a, const std::vector<float>& w) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * w[i];
  return s;
}

// Raw arrays exchanged with the PyTorch reference scripts.
template <class T>
void write_raw(const std::filesystem::path& p, const T* data, size_t n) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(data), std::streamsize(n * sizeof(T)));
}

inline std::vector<float> read_raw(const std::filesystem::path& p, size_t n) {
  std::vector<float> v(n);
  std::ifstream in(p, std::ios::binary);
  in.read(reinterpret_cast<char*>(v.data()), std::streamsize(n * sizeof(float)));
  EXPECT_EQ(size_t(in.gcount()), n * sizeof(float)) << p;
  return v;
}

// |got[i] - want[i]| <= tol * (1 + |want[i]|) for all i.
template <class G, class W>
void expect_close(const std::vector<G>& got, const std::vector<W>& want, double tol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); i++)
    ASSERT_LE(std::abs(double(got[i]) - double(want[i])), tol * (1.0 + std::abs(double(want[i]))))
        << what << "[" << i << "]: got " << got[i] << ", want " << want[i];
}

// max |got - want| <= tol * max |want| over [0, n): one tolerance for a whole tensor, scaled by
// its largest value (backends that sum in different orders). A NaN or inf on either side fails
// (std::max would skip a NaN difference).
inline void expect_close_to_max(const float* got, const float* want, size_t n, float tol, const std::string& what) {
  float scale = 0, diff = 0;
  for (size_t i = 0; i < n; i++) {
    if (!std::isfinite(got[i]) || !std::isfinite(want[i])) {
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i];
      return;
    }
    scale = std::max(scale, std::fabs(want[i]));
    diff = std::max(diff, std::fabs(got[i] - want[i]));
  }
  EXPECT_LE(diff, tol * scale) << what << ": max |got - want| " << diff << ", max |want| " << scale;
}

// A backward's gradient `got`, accumulated onto `g0`, against central differences (h 1e-5) of
// `loss` (a double reference) with respect to `x`, within tol * (1 + |fd|), at every index or at
// `samples` random ones.
inline void expect_fd_grad(const std::vector<float>& got, const std::vector<float>& g0, std::vector<double>& x,
                           const std::function<double()>& loss, double tol, const char* what,
                           size_t samples = SIZE_MAX) {
  ASSERT_EQ(got.size(), x.size()) << what;
  std::vector<size_t> idx(x.size());
  std::iota(idx.begin(), idx.end(), 0);
  if (samples < idx.size()) {
    std::shuffle(idx.begin(), idx.end(), std::mt19937(7));
    idx.resize(samples);
  }
  constexpr double h = 1e-5;
  for (size_t i : idx) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss();
    x[i] = saved - h;
    const double down = loss();
    x[i] = saved;
    const double fd = (up - down) / (2 * h), g = double(got[i]) - g0[i];
    ASSERT_LE(std::abs(g - fd), tol * (1.0 + std::abs(fd)))
        << what << "[" << i << "]: backward " << g << ", finite differences " << fd;
  }
}

}  // namespace test_util
