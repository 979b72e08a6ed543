#pragma once
// The kernel test table's pieces (test_backend_ops.cpp runs it): a case's buffers and how to run
// it, the deterministic inputs, and the two halves of the table, one per file by kind of kernel:
// backend_ops_dense.cpp (elementwise, token shift, value residual, encoder, layernorm, matmul,
// attention) and backend_ops_more.cpp (cross-entropy, optimizer and norms, RoPE, head layernorm,
// bf16 rounding, layout, KVM).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/backend.h"
#include "kernels/bf16.h"
#include "kernels/kernels.h"
#include "kernels/kvm.h"
#include "tests/kernels/kvm_cases.h"
#include "tests/kernels/references.h"
#include "tests/test_util.h"

namespace backend_ops {

using kernels::bf16;
using test_util::DVec;
using test_util::randn;
using Vec = std::vector<float>;

constexpr int kN = 100003;         // elementwise kernels: not a multiple of any block size
constexpr size_t kGuard = 64;      // guard elements before and after every buffer
constexpr double kGradTol = 2e-4;  // finite differences, as test_kernels.cpp

// ---- cases ------------------------------------------------------------------------------------

enum class Type { f32, i32, bf16 };
inline size_t size_of(Type t) { return t == Type::bf16 ? sizeof(bf16) : 4; }

// One buffer of a case: its contents before the run and, for an output, how close it must come:
// tol to the CPU twin (cuda), naive_tol to the naive reference (cpu; negative: not compared).
struct Buffer {
  std::string name;
  Type type;
  std::vector<unsigned char> bytes;
  bool output = false;
  double tol = 0, naive_tol = -1;
  bool relative = false;  // tol |want| instead of tol (1 + |want|)
  size_t count() const { return bytes.size() / size_of(type); }
};

// A case's buffers in a backend's memory, by name.
struct Args {
  std::map<std::string, void*> ptr;
  void* at(const std::string& n) const {
    auto it = ptr.find(n);
    if (it == ptr.end()) throw std::logic_error("no buffer " + n);
    return it->second;
  }
  float* f(const std::string& n) const { return static_cast<float*>(at(n)); }
  int* i(const std::string& n) const { return static_cast<int*>(at(n)); }
  bf16* h(const std::string& n) const { return static_cast<bf16*>(at(n)); }
};

// A case's buffers on the host in double (ints apart), for the naive references and the losses:
// inputs as made, outputs as they start (an accumulating reference adds to them).
struct Host {
  std::map<std::string, DVec> v;
  std::map<std::string, std::vector<int>> ints;
  DVec& operator[](const std::string& n) { return v.at(n); }
  const std::vector<int>& i(const std::string& n) const { return ints.at(n); }
};

// A backward kernel's gradient output `grad` of the case's loss with respect to input `input`,
// added to grad's start values (accumulates) or written.
struct Grad {
  std::string input, grad;
  bool accumulates;
  size_t samples;  // finite differences at this many random elements (all: SIZE_MAX)
  Grad(std::string in, std::string g, bool acc, size_t n = SIZE_MAX)
      : input(std::move(in)), grad(std::move(g)), accumulates(acc), samples(n) {}
};

struct Case {
  explicit Case(std::string n) : name(std::move(n)) {}
  std::string name;
  std::vector<Buffer> bufs;
  std::function<void(const Backend&, const Args&)> run;
  std::function<void(Host&)> naive;   // writes the outputs' expected values from the inputs
  std::function<double(Host&)> loss;  // backward kernels: the forward's double reference, dotted with dout
  std::vector<Grad> grads;
  double flops = 0;  // of one run, for the perf table (0: not shown)

  template <class T>
  Case& add(const std::string& n, Type t, const std::vector<T>& v, bool output, double tol, double naive_tol) {
    std::vector<unsigned char> bytes(v.size() * sizeof(T));
    std::memcpy(bytes.data(), v.data(), bytes.size());
    bufs.push_back({n, t, std::move(bytes), output, tol, naive_tol, false});
    return *this;
  }
  Case& in(const std::string& n, const Vec& v) { return add(n, Type::f32, v, false, 0, -1); }
  Case& in(const std::string& n, const std::vector<int>& v) { return add(n, Type::i32, v, false, 0, -1); }
  Case& in(const std::string& n, const std::vector<bf16>& v) { return add(n, Type::bf16, v, false, 0, -1); }
  Case& out(const std::string& n, const Vec& start, double tol, double naive_tol = -1) {
    return add(n, Type::f32, start, true, tol, naive_tol);
  }
  Case& out(const std::string& n, const std::vector<bf16>& start, double naive_tol) {
    return add(n, Type::bf16, start, true, 0, naive_tol);
  }
  Case& relative() {  // the last buffer compares relatively
    bufs.back().relative = true;
    return *this;
  }
};

// ---- inputs -----------------------------------------------------------------------------------

// The parts printed one after another: names of cases and buffers (GCC 12 warns, wrongly, of
// overlapping copies in "literal" + std::to_string(x)).
template <class... P>
std::string cat(const P&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

inline Vec nans(size_t n) { return Vec(n, NAN); }  // a written output: a kernel that read it or missed one shows

inline std::vector<int> randint(size_t n, int hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(0, hi - 1);
  std::vector<int> v(n);
  for (int& x : v) x = dist(rng);
  return v;
}

inline Vec uniform(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  Vec v(n);
  for (float& x : v) x = unit(rng);
  return v;
}

inline std::vector<bf16> to_bf16(const Vec& v) {  // nearest even (the trainer's copy is rounded stochastically)
  std::vector<bf16> h(v.size());
  for (size_t i = 0; i < v.size(); i++) h[i] = kernels::bf16_round_nearest(v[i]);
  return h;
}

inline DVec rounded(const DVec& x) {  // x rounded to bf16, as the bf16 matmuls round their activations
  DVec r(x.size());
  for (size_t i = 0; i < x.size(); i++) r[i] = kernels::bf16_to_float(kernels::bf16_round_nearest(float(x[i])));
  return r;
}

inline double dot(const DVec& a, const DVec& b) { return std::inner_product(a.begin(), a.end(), b.begin(), 0.0); }

// sum_k w_k y_k over the columns [0, width) of rows of ld: a loss over the heads of a wider row
inline double dot_columns(const DVec& y, const DVec& w, size_t rows, int width, int ld) {
  double s = 0.0;
  for (size_t r = 0; r < rows; r++)
    for (int c = 0; c < width; c++) s += y[r * ld + c] * w[r * ld + c];
  return s;
}

// The cases of each half of the table, in the order they run.
std::vector<Case> dense_cases();
std::vector<Case> more_cases();

}  // namespace backend_ops
