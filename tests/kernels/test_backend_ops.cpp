// Every kernel of kernels/kernels.h and the KVM core (kernels/kvm.h) in one table, after ggml's
// test-backend-ops: a case names a kernel, makes deterministic inputs of fixed shapes, runs the
// kernel through a Backend table (kernels/backend.h) on buffers that backend allocated, and says
// which buffers are outputs and how close they must come. Adding a kernel is adding a case to
// cases(). For every case and backend (a test each, Kernels/BackendOps.Run/<case>_<backend>):
//  - cpu: the outputs against the case's naive reference (a host loop in double), where it has one;
//  - cuda, where built and a device is visible (else skipped with the reason): the outputs against
//    the CPU twin's on the same inputs;
//  - both: each buffer lies between two guards of 64 elements of a NaN pattern, which must be intact
//    after the run (writes out of bounds), and a buffer that is not an output must be unchanged.
// Gradient mode (Kernels/Gradient.FiniteDifferences/<case>, cpu): a backward kernel's gradients
// against central differences of its forward's double reference (test_util::expect_fd_grad,
// |got - g0 - fd| <= 2e-4 (1 + |fd|), as test_kernels.cpp). The KVM backward's finite differences
// stay test_kvm.cpp's: a perturbation may flip the routing, which that test detects.
// Perf mode: `test_backend_ops --perf` times every case on every backend instead (same shapes).
//
// Tolerances |got - want| <= tol (1 + |want|) (relative, tol |want|, for global_norm_squared);
// against the CPU twin (cuda), as the CUDA tests they replace had them:
//  - exact (0): encoder forward, relu2 forward, the cross-entropy shard maxima, the layout kernels,
//    attention_decode's cache rows; bf16 outputs bit for bit;
//  - 1e-6: relu2 backward, rope (FMA contraction; cos/sin in double, then rounded), adamw after
//    three steps (2e-6), global_norm_squared (both accumulate in double), scaled_residual, token
//    shift forward and dinp, elu_gate forward (expf within 2 ulp of glibc's exp, on values <= 1),
//    axpby_rows;
//  - 1e-5: GELU (the two tanh differ by ~2e-7), elu_gate backward, encoder backward (atomicAdd
//    order), layernorm and head_layernorm forward, cross-entropy and its shard phases (expf against
//    the CPU's exp, sums in another order);
//  - 1e-4: sums of hundreds of terms in another order: layernorm and head_layernorm backward,
//    token shift dmix, the matmuls (cuBLASLt fp32 without TF32; bf16: the same rounded operands),
//    the GELU epilogue, attention forward, backward and decode, KVM forward and decode;
//  - 1e-3: the KVM gradients (sums over every read-out and token in another order).
// Against the naive references (cpu): 1e-5, 2e-5 where a float exp or tanh is involved, exact for
// data movement and rounding; the bf16 matmuls' references take the bf16-rounded operands.
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

namespace {

using kernels::bf16;
using test_util::DVec;
using test_util::randn;
using Vec = std::vector<float>;

constexpr int kN = 100003;         // elementwise kernels: not a multiple of any block size
constexpr size_t kGuard = 64;      // guard elements before and after every buffer
constexpr double kGradTol = 2e-4;  // finite differences, as test_kernels.cpp

// ---- cases ------------------------------------------------------------------------------------

enum class Type { f32, i32, bf16 };
size_t size_of(Type t) { return t == Type::bf16 ? sizeof(bf16) : 4; }

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

Vec nans(size_t n) { return Vec(n, NAN); }  // a written output: a kernel that read it or missed one shows

std::vector<int> randint(size_t n, int hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(0, hi - 1);
  std::vector<int> v(n);
  for (int& x : v) x = dist(rng);
  return v;
}

Vec uniform(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  Vec v(n);
  for (float& x : v) x = unit(rng);
  return v;
}

std::vector<bf16> to_bf16(const Vec& v) {  // nearest even (the trainer's copy is rounded stochastically)
  std::vector<bf16> h(v.size());
  for (size_t i = 0; i < v.size(); i++) h[i] = kernels::bf16_round_nearest(v[i]);
  return h;
}

DVec rounded(const DVec& x) {  // x rounded to bf16, as the bf16 matmuls round their activations
  DVec r(x.size());
  for (size_t i = 0; i < x.size(); i++) r[i] = kernels::bf16_to_float(kernels::bf16_round_nearest(float(x[i])));
  return r;
}

double dot(const DVec& a, const DVec& b) { return std::inner_product(a.begin(), a.end(), b.begin(), 0.0); }

// sum_k w_k y_k over the columns [0, width) of rows of ld: a loss over the heads of a wider row
double dot_columns(const DVec& y, const DVec& w, size_t rows, int width, int ld) {
  double s = 0.0;
  for (size_t r = 0; r < rows; r++)
    for (int c = 0; c < width; c++) s += y[r * ld + c] * w[r * ld + c];
  return s;
}

// ---- elementwise ------------------------------------------------------------------------------

using Unary = void (*)(float* out, const float* inp, int N);
using UnaryBackward = void (*)(float* dinp, const float* inp, const float* dout, int N);

// An activation's forward (f: its double reference) and backward, which writes dinp or adds to it.
Case unary_forward(const std::string& name, Unary Backend::*fn, Vec x, double (*f)(double), double tol) {
  Case c{name};
  c.in("inp", x).out("out", nans(x.size()), tol, 2e-5);
  const int N = int(x.size());
  c.run = [=](const Backend& be, const Args& a) { (be.*fn)(a.f("out"), a.f("inp"), N); };
  c.naive = [=](Host& h) {
    for (int i = 0; i < N; i++) h["out"][i] = f(h["inp"][i]);
  };
  return c;
}
Case unary_backward(const std::string& name, UnaryBackward Backend::*fn, Vec x, double (*f)(double), bool accumulates,
                    double tol, uint32_t seed) {
  const int N = int(x.size());
  Case c{name};
  c.in("inp", x).in("dout", randn(N, seed)).out("dinp", accumulates ? randn(N, seed + 1) : nans(N), tol);
  c.run = [=](const Backend& be, const Args& a) { (be.*fn)(a.f("dinp"), a.f("inp"), a.f("dout"), N); };
  c.loss = [=](Host& h) {
    double s = 0.0;
    for (int i = 0; i < N; i++) s += h["dout"][i] * f(h["inp"][i]);
    return s;
  };
  c.grads = {{"inp", "dinp", accumulates, 200}};
  return c;
}

double gelu(double x) { return test_util::ref_gelu(x); }
double relu2(double x) { return x > 0 ? x * x : 0.0; }
double elu_gate(double x) { return 1.0 + (x > 0 ? x : std::exp(x) - 1.0); }

Vec elu_gate_inputs() {
  Vec x = randn(kN, 160, 3.0f);
  x[0] = 0.0f;  // the branch point: exp(0) = 1 = 1 + 0
  return x;
}

// out = a + s*b; in place: out is a
Case scaled_residual_forward(bool in_place) {
  const float s = 0.37f;
  Case c{in_place ? "scaled_residual_forward_in_place" : "scaled_residual_forward"};
  c.in("b", randn(kN, 151));
  if (in_place) c.out("a", randn(kN, 150), 1e-6, 2e-5);
  else c.in("a", randn(kN, 150)).out("out", nans(kN), 1e-6, 2e-5);
  const std::string out = in_place ? "a" : "out";
  c.run = [=](const Backend& be, const Args& a) { be.scaled_residual_forward(a.f(out), a.f("a"), a.f("b"), s, kN); };
  c.naive = [=](Host& h) {
    for (int i = 0; i < kN; i++) h[out][i] = h["a"][i] + s * h["b"][i];
  };
  return c;
}

// ---- token shift ------------------------------------------------------------------------------

constexpr int kShiftB = 3, kShiftT = 37, kShiftC = 100;  // C not a multiple of 32

Case token_shift_forward(bool with_prev) {
  const int B = kShiftB, T = kShiftT, C = kShiftC;
  const size_t n = (size_t)B * T * C;
  Case c{with_prev ? "token_shift_forward_prev" : "token_shift_forward"};
  c.in("inp", randn(n, 170)).in("prev", randn((size_t)B * C, 171)).in("mix", uniform(C, 175));
  c.out("out", nans(n), 1e-6, 2e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.token_shift_forward(a.f("out"), a.f("inp"), with_prev ? a.f("prev") : nullptr, a.f("mix"), B, T, C);
  };
  c.naive = [=](Host& h) {
    h["out"] = test_util::ref_shift(h["inp"], with_prev ? &h["prev"] : nullptr, h["mix"], B, T, C);
  };
  return c;
}

Case token_shift_backward() {
  const int B = kShiftB, T = kShiftT, C = kShiftC;
  const size_t n = (size_t)B * T * C;
  Case c{"token_shift_backward"};
  c.in("inp", randn(n, 170)).in("mix", uniform(C, 175)).in("dout", randn(n, 172));
  c.out("dinp", randn(n, 173), 1e-6).out("dmix", randn(C, 174), 1e-4);
  c.run = [=](const Backend& be, const Args& a) {
    be.token_shift_backward(a.f("dinp"), a.f("dmix"), a.f("dout"), a.f("inp"), a.f("mix"), B, T, C);
  };
  c.loss = [=](Host& h) {
    return dot(test_util::ref_shift(h["inp"], nullptr, h["mix"], B, T, C), h["dout"]);
  };
  c.grads = {{"inp", "dinp", true, 500}, {"mix", "dmix", true}};
  return c;
}

// ---- encoder ----------------------------------------------------------------------------------

// B=3, T=37, C=96 over Vp=64 tokens (B*T > Vp: tokens repeat), with wpe of maxT=50 or without; a
// shard takes the vocabulary rows [32, 64) (the other half's tokens: zero rows)
struct EncoderShape {
  int B = 3, T = 37, C = 96, Vp = 64, maxT = 50, v0, Vl;
  bool wpe;
  EncoderShape(bool shard, bool with_wpe) : v0(shard ? 32 : 0), Vl(shard ? 32 : 64), wpe(with_wpe) {}
  std::string name() const { return std::string(v0 ? "_shard" : "") + (wpe ? "" : "_no_wpe"); }
};

DVec ref_encoder(Host& h, const EncoderShape& s) {
  return test_util::ref_encoder(h.i("inp"), h["wte"], s.wpe ? &h["wpe"] : nullptr, s.B, s.T, s.C, s.v0, s.Vl);
}

Case encoder_forward(const EncoderShape& s) {
  Case c{"encoder_forward" + s.name()};
  c.in("inp", randint((size_t)s.B * s.T, s.Vp, 10)).in("wte", randn((size_t)s.Vl * s.C, 11));
  c.in("wpe", randn((size_t)s.maxT * s.C, 12)).out("out", nans((size_t)s.B * s.T * s.C), 0.0, 1e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.encoder_forward(a.f("out"), a.i("inp"), a.f("wte"), s.wpe ? a.f("wpe") : nullptr, s.B, s.T, s.C, s.v0, s.Vl);
  };
  c.naive = [=](Host& h) { h["out"] = ref_encoder(h, s); };
  return c;
}

Case encoder_backward(const EncoderShape& s) {
  Case c{"encoder_backward" + s.name()};
  c.in("inp", randint((size_t)s.B * s.T, s.Vp, 10)).in("wte", randn((size_t)s.Vl * s.C, 11));
  c.in("wpe", randn((size_t)s.maxT * s.C, 12)).in("dout", randn((size_t)s.B * s.T * s.C, 13));
  c.out("dwte", randn((size_t)s.Vl * s.C, 14), 1e-5).out("dwpe", randn((size_t)s.maxT * s.C, 15), 1e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.encoder_backward(a.f("dwte"), s.wpe ? a.f("dwpe") : nullptr, a.f("dout"), a.i("inp"), s.B, s.T, s.C, s.v0, s.Vl);
  };
  c.loss = [=](Host& h) { return dot(ref_encoder(h, s), h["dout"]); };
  c.grads = {{"wte", "dwte", true, 500}};
  // dwpe's rows past T take nothing (their start values stay): the differences cover them too. A
  // shard's dwpe takes every position, its zero rows included (test_kernels.cpp checks that).
  if (s.wpe && !s.v0) c.grads.push_back({"wpe", "dwpe", true, 500});
  return c;
}

// ---- layernorm --------------------------------------------------------------------------------

constexpr int kLnN = 333, kLnC = 200;  // C not a multiple of 32, N not of the rows per block

Vec layernorm_inputs() {
  Vec x = randn((size_t)kLnN * kLnC, 20, 2.0f);
  for (float& v : x) v += 3.0f;  // rows away from zero mean
  return x;
}

Case layernorm_forward() {
  const int N = kLnN, C = kLnC;
  Case c{"layernorm_forward"};
  c.in("inp", layernorm_inputs()).in("weight", randn(C, 21)).in("bias", randn(C, 22));
  c.out("out", nans((size_t)N * C), 1e-5, 1e-5).out("mean", nans(N), 1e-5, 1e-5).out("rstd", nans(N), 1e-5, 1e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.layernorm_forward(a.f("out"), a.f("mean"), a.f("rstd"), a.f("inp"), a.f("weight"), a.f("bias"), N, C);
  };
  c.naive = [=](Host& h) {
    h["out"] = test_util::ref_layernorm(h["inp"], h["weight"], h["bias"], N, C, &h["mean"], &h["rstd"]);
  };
  return c;
}

Case layernorm_backward() {
  const int N = kLnN, C = kLnC;
  Vec x = layernorm_inputs(), w = randn(C, 21), b = randn(C, 22), out((size_t)N * C), mean(N), rstd(N);
  kernels::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  Case c{"layernorm_backward"};  // from the CPU's statistics, so that only the backward is compared
  c.in("inp", x).in("weight", w).in("bias", b).in("mean", mean).in("rstd", rstd).in("dout", randn(x.size(), 23));
  c.out("dinp", randn(x.size(), 24), 1e-4).out("dweight", randn(C, 25), 1e-4).out("dbias", randn(C, 26), 1e-4);
  c.run = [=](const Backend& be, const Args& a) {
    be.layernorm_backward(a.f("dinp"), a.f("dweight"), a.f("dbias"), a.f("dout"), a.f("inp"), a.f("weight"),
                          a.f("mean"), a.f("rstd"), N, C);
  };
  c.loss = [=](Host& h) {
    return dot(test_util::ref_layernorm(h["inp"], h["weight"], h["bias"], N, C), h["dout"]);
  };
  c.grads = {{"inp", "dinp", true, 300}, {"weight", "dweight", true, 100}, {"bias", "dbias", true, 100}};
  return c;
}

// ---- matmul, fp32 and bf16, and the fused GELU -------------------------------------------------

constexpr int kMmN = 150, kMmIC = 96, kMmOC = 130;

// out = inp w^T + bias in double; bf16: inp rounded (w is rounded already)
DVec ref_matmul(Host& h, bool bias, bool bf16, int N, int IC, int OC) {
  return test_util::ref_matmul(bf16 ? rounded(h["inp"]) : h["inp"], h["weight"], bias ? &h["bias"] : nullptr, N, IC,
                               OC);
}

// offset 1: every operand starts one float into its buffer, as slices of a larger one do (cuBLASLt
// must be asked for algorithms that take 4-byte aligned operands, not its default 256)
Case matmul_forward(bool bias, int offset) {
  const int N = kMmN, IC = kMmIC, OC = kMmOC;
  auto lead = [&](Vec v) {
    v.insert(v.begin(), offset, 0.0f);
    return v;
  };
  Case c{std::string("matmul_forward") + (bias ? "" : "_no_bias") + (offset ? "_unaligned" : "")};
  c.in("inp", lead(randn((size_t)N * IC, 30))).in("weight", lead(randn((size_t)OC * IC, 31, 0.1f)));
  c.in("bias", lead(randn(OC, 32))).out("out", lead(nans((size_t)N * OC)), 1e-4, 1e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.matmul_forward(a.f("out") + offset, a.f("inp") + offset, a.f("weight") + offset,
                      bias ? a.f("bias") + offset : nullptr, N, IC, OC);
  };
  c.naive = [=](Host& h) {
    for (const char* n : {"inp", "weight", "bias"}) h[n].erase(h[n].begin(), h[n].begin() + offset);
    DVec out = ref_matmul(h, bias, false, N, IC, OC);
    std::copy(out.begin(), out.end(), h["out"].begin() + offset);
  };
  c.flops = 2.0 * N * IC * OC;
  return c;
}

Case matmul_forward_bf16(bool bias, int N) {
  const int IC = kMmIC, OC = kMmOC;
  Case c{std::string("matmul_forward_bf16") + (bias ? "" : "_no_bias") + (N > kMmN ? "_grown" : "")};
  c.in("inp", randn((size_t)N * IC, 130)).in("weight", to_bf16(randn((size_t)OC * IC, 131, 0.1f)));
  c.in("bias", randn(OC, 132)).out("out", nans((size_t)N * OC), 1e-4, 1e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.matmul_forward_bf16(a.f("out"), a.f("inp"), a.h("weight"), bias ? a.f("bias") : nullptr, N, IC, OC);
  };
  c.naive = [=](Host& h) { h["out"] = ref_matmul(h, bias, true, N, IC, OC); };
  c.flops = 2.0 * N * IC * OC;
  return c;
}

// Without bias, also without dinp. Gradients written (accumulate false) start as NaN.
Case matmul_backward(bool bias, bool accumulate, bool bf16) {
  const int N = kMmN, IC = kMmIC, OC = kMmOC;
  auto start = [&](Vec v) { return accumulate ? v : nans(v.size()); };
  Case c{std::string(bf16 ? "matmul_backward_bf16" : "matmul_backward") + (bias ? "" : "_no_bias_no_dinp") +
         (accumulate ? "" : "_overwrite")};
  Vec w = randn((size_t)OC * IC, 31, 0.1f);
  c.in("inp", randn((size_t)N * IC, 30)).in("dout", randn((size_t)N * OC, 33));
  if (bf16) c.in("weight", to_bf16(w));
  else c.in("weight", w);
  if (bias) c.in("bias", randn(OC, 32));  // for the loss only
  c.out("dweight", start(randn(w.size(), 35)), 1e-4, 1e-5);
  if (bias) c.out("dinp", start(randn((size_t)N * IC, 34)), 1e-4, 1e-5).out("dbias", start(randn(OC, 36)), 1e-4, 1e-5);
  c.run = [=](const Backend& be, const Args& a) {
    float* dinp = bias ? a.f("dinp") : nullptr;
    float* dbias = bias ? a.f("dbias") : nullptr;
    if (bf16)
      be.matmul_backward_bf16(dinp, a.f("dweight"), dbias, a.f("dout"), a.f("inp"), a.h("weight"), N, IC, OC,
                              accumulate, accumulate);
    else
      be.matmul_backward(dinp, a.f("dweight"), dbias, a.f("dout"), a.f("inp"), a.f("weight"), N, IC, OC, accumulate,
                         accumulate);
  };
  // bf16: dout and inp rounded to bf16 in the products; the bias gradient sums the fp32 dout
  c.naive = [=](Host& h) {
    const DVec d = bf16 ? rounded(h["dout"]) : h["dout"], x = bf16 ? rounded(h["inp"]) : h["inp"];
    const DVec& wd = h["weight"];
    for (const char* g : {"dinp", "dweight", "dbias"})
      if (!accumulate && h.v.count(g)) std::fill(h[g].begin(), h[g].end(), 0.0);
    for (int n = 0; n < N; n++)
      for (int o = 0; o < OC; o++) {
        const double dno = d[(size_t)n * OC + o];
        if (bias) h["dbias"][o] += h["dout"][(size_t)n * OC + o];
        for (int i = 0; i < IC; i++) {
          if (bias) h["dinp"][(size_t)n * IC + i] += dno * wd[(size_t)o * IC + i];
          h["dweight"][(size_t)o * IC + i] += dno * x[(size_t)n * IC + i];
        }
      }
  };
  if (!bf16) {  // the bf16 backward is not the derivative of the rounded forward
    c.loss = [=](Host& h) { return dot(ref_matmul(h, bias, false, N, IC, OC), h["dout"]); };
    c.grads = {{"weight", "dweight", accumulate, 100}};
    if (bias) c.grads.push_back({"inp", "dinp", accumulate, 100}), c.grads.push_back({"bias", "dbias", accumulate, 30});
  }
  c.flops = (bias ? 4.0 : 2.0) * N * IC * OC;
  return c;
}

// pre = inp w^T + bias, out = gelu(pre) (cuBLASLt's GELU_AUX_BIAS epilogue on cuda); OC a multiple
// of 8, the auxiliary leading dimension
Case matmul_gelu_forward(bool bias, bool bf16) {
  const int N = 33, IC = 48, OC = 136;
  Case c{std::string(bf16 ? "matmul_gelu_forward_bf16" : "matmul_gelu_forward") + (bias ? "" : "_no_bias")};
  Vec w = randn((size_t)OC * IC, 151, 0.2f);
  c.in("inp", randn((size_t)N * IC, 150)).in("bias", randn(OC, 152));
  if (bf16) c.in("weight", to_bf16(w));
  else c.in("weight", w);
  c.out("out", nans((size_t)N * OC), 1e-4, 1e-5).out("pre", nans((size_t)N * OC), 1e-4, 1e-5);
  c.run = [=](const Backend& be, const Args& a) {
    const float* b = bias ? a.f("bias") : nullptr;
    if (bf16) be.matmul_gelu_forward_bf16(a.f("out"), a.f("pre"), a.f("inp"), a.h("weight"), b, N, IC, OC);
    else be.matmul_gelu_forward(a.f("out"), a.f("pre"), a.f("inp"), a.f("weight"), b, N, IC, OC);
  };
  c.naive = [=](Host& h) {
    h["pre"] = ref_matmul(h, bias, bf16, N, IC, OC);
    for (size_t i = 0; i < h["pre"].size(); i++) h["out"][i] = test_util::ref_gelu(h["pre"][i]);
  };
  c.flops = 2.0 * N * IC * OC;
  return c;
}

// ---- attention --------------------------------------------------------------------------------

struct AttentionShape {
  int B, T, C, NH, window;
  std::string name() const {
    return cat("B", B, "_T", T, "_hs", C / NH, "_window", window);
  }
};
// hs 16 (lanes idle), 64 (GPT-2), 80 (not a multiple of 32); T not a multiple of any tile; a
// window of 17, and of 1 (each query sees only itself)
const AttentionShape kAttentionShapes[] = {
    {2, 77, 64, 4, 0}, {1, 150, 128, 2, 0}, {2, 70, 160, 2, 17}, {1, 40, 64, 1, 1}};

Case attention_forward(const AttentionShape& s) {
  const size_t nqkv = (size_t)s.B * s.T * 3 * s.C, nout = (size_t)s.B * s.T * s.C, nlse = (size_t)s.B * s.NH * s.T;
  Case c{"attention_forward_" + s.name()};
  c.in("qkv", randn(nqkv, 70)).out("out", nans(nout), 1e-4, 2e-5).out("lse", nans(nlse), 1e-4, 2e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.attention_forward(a.f("out"), a.f("lse"), a.f("qkv"), s.B, s.T, s.C, s.NH, s.window);
  };
  c.naive = [=](Host& h) { h["out"] = test_util::ref_attention(h["qkv"], s.B, s.T, s.C, s.NH, s.window, &h["lse"]); };
  c.flops = 4.0 * s.B * s.T * (s.window ? std::min(s.T, s.window) : s.T / 2.0) * s.C;
  return c;
}

Case attention_backward(const AttentionShape& s) {
  const size_t nqkv = (size_t)s.B * s.T * 3 * s.C, nout = (size_t)s.B * s.T * s.C, nlse = (size_t)s.B * s.NH * s.T;
  Vec qkv = randn(nqkv, 70), out(nout), lse(nlse);
  kernels::cpu::attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.window);
  Case c{"attention_backward_" + s.name()};  // from the CPU's out and lse, so that only the backward is compared
  c.in("qkv", qkv).in("out", out).in("lse", lse).in("dout", randn(nout, 71)).out("dqkv", randn(nqkv, 72), 1e-4);
  c.run = [=](const Backend& be, const Args& a) {
    be.attention_backward(a.f("dqkv"), a.f("dout"), a.f("qkv"), a.f("out"), a.f("lse"), s.B, s.T, s.C, s.NH,
                          s.window);
  };
  c.loss = [=](Host& h) {
    return dot(test_util::ref_attention(h["qkv"], s.B, s.T, s.C, s.NH, s.window), h["dout"]);
  };
  c.grads = {{"qkv", "dqkv", true, 100}};
  c.flops = 10.0 * s.B * s.T * (s.window ? std::min(s.T, s.window) : s.T / 2.0) * s.C;
  return c;
}

// One token at position 40 over ring caches already holding earlier rows: full attention (cap 48)
// and a window of 17 in a ring of exactly 17 (slot 40 % 17 = 6 overwritten, keys 24..40 read)
Case attention_decode(int window, int cap) {
  const int B = 2, C = 64, NH = 4, pos = 40, hs = C / NH;
  Case c{cat("attention_decode_window", window, "_cap", cap)};
  c.in("qkv", randn((size_t)B * 3 * C, 75)).out("out", nans((size_t)B * C), 1e-4, 2e-5);
  c.out("k_cache", randn((size_t)B * cap * C, 76), 0.0, 0.0).out("v_cache", randn((size_t)B * cap * C, 77), 0.0, 0.0);
  c.run = [=](const Backend& be, const Args& a) {
    be.attention_decode(a.f("out"), a.f("k_cache"), a.f("v_cache"), a.f("qkv"), B, C, NH, pos, cap, window);
  };
  c.naive = [=](Host& h) {
    const int first = window ? std::max(0, pos - window + 1) : 0;
    DVec &kc = h["k_cache"], &vc = h["v_cache"], &qkv = h["qkv"];
    for (int b = 0; b < B; b++) {
      std::copy_n(&qkv[(size_t)b * 3 * C + C], C, &kc[((size_t)b * cap + pos % cap) * C]);
      std::copy_n(&qkv[(size_t)b * 3 * C + 2 * C], C, &vc[((size_t)b * cap + pos % cap) * C]);
      for (int hd = 0; hd < NH; hd++) {
        DVec att;
        for (int j = first; j <= pos; j++) {
          double s = 0.0;
          for (int d = 0; d < hs; d++)
            s += qkv[(size_t)b * 3 * C + hd * hs + d] * kc[((size_t)b * cap + j % cap) * C + hd * hs + d];
          att.push_back(s / std::sqrt(double(hs)));
        }
        const double mx = *std::max_element(att.begin(), att.end());
        double sum = 0.0;
        for (double& x : att) sum += x = std::exp(x - mx);
        for (int d = 0; d < hs; d++) {
          double o = 0.0;
          for (int j = first; j <= pos; j++)
            o += att[j - first] / sum * vc[((size_t)b * cap + j % cap) * C + hd * hs + d];
          h["out"][(size_t)b * C + hd * hs + d] = o;
        }
      }
    }
  };
  return c;
}

// ---- cross-entropy ----------------------------------------------------------------------------

constexpr int kCeN = 70, kCeV = 1000, kCeIgnore = -100;

std::vector<int> ce_targets() {
  std::vector<int> t = randint(kCeN, kCeV, 41);
  t[3] = t[50] = kCeIgnore;
  t[7] = kCeV - 1;  // the last real column
  return t;
}

// dloss 0: the losses only, the logits untouched; else dlogits written over them
Case crossentropy_forward_backward(float dloss) {
  const int N = kCeN, V = kCeV, Vp = 1024, ignore = kCeIgnore;
  Case c{dloss == 0.0f ? "crossentropy_forward_backward_dloss0" : "crossentropy_forward_backward"};
  c.in("targets", ce_targets()).out("logits", randn((size_t)N * Vp, 40, 3.0f), 1e-5, 2e-5);
  c.out("losses", nans(N), 1e-5, 2e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.crossentropy_forward_backward(a.f("logits"), a.f("losses"), a.i("targets"), N, V, Vp, dloss, ignore);
  };
  c.naive = [=](Host& h) {
    h["losses"] = test_util::ref_crossentropy(h["logits"], h.i("targets"), N, V, Vp, ignore);
    if (dloss == 0.0f) return;
    for (int i = 0; i < N; i++) {
      double* row = &h["logits"][(size_t)i * Vp];
      const double mx = *std::max_element(row, row + V);
      double sum = 0.0;
      for (int j = 0; j < V; j++) sum += std::exp(row[j] - mx);
      for (int j = 0; j < Vp; j++) {
        const bool real = j < V && h.i("targets")[i] != ignore;
        row[j] = real ? dloss * (std::exp(row[j] - mx) / sum - (j == h.i("targets")[i])) : 0.0;
      }
    }
  };
  if (dloss != 0.0f) {
    c.loss = [=](Host& h) {
      DVec l = test_util::ref_crossentropy(h["logits"], h.i("targets"), N, V, Vp, ignore);
      return dloss * std::accumulate(l.begin(), l.end(), 0.0);
    };
    c.grads = {{"logits", "logits", false, 300}};
  }
  return c;
}

// The vocabulary-parallel phases on shard r of TP = 3 shards of V = 1000 of Vp = 1536: [0,512),
// [512,1024) (488 real columns) and [1024,1536) (padding only). Each phase starts from the CPU's
// results of the phases before it, so that it is compared alone.
struct CeShards {
  static constexpr int N = kCeN, V = kCeV, TP = 3, Vl = 512;
  std::vector<int> targets = ce_targets();
  std::vector<Vec> logits;  // (TP) (N,Vl)
  Vec mxs = Vec((size_t)TP * N), mx = Vec(N), sums = Vec((size_t)2 * N, 0.0f);  // all shards' phases 1 and 2
  CeShards() {
    for (int r = 0; r < TP; r++) {
      logits.push_back(randn((size_t)N * Vl, 42 + r, 3.0f));
      kernels::cpu::crossentropy_shard_max(&mxs[(size_t)r * N], logits[r].data(), N, V, r * Vl, Vl);
    }
    for (int r = 0; r < TP; r++) {
      Vec part((size_t)2 * N);
      kernels::cpu::crossentropy_shard_sums(part.data(), mx.data(), mxs.data(), logits[r].data(), targets.data(), N, TP,
                                            V, r * Vl, Vl, kCeIgnore);
      for (size_t k = 0; k < sums.size(); k++) sums[k] += part[k];
    }
  }
};

Case crossentropy_shard_max(int r) {
  const CeShards s;
  const int N = s.N, V = s.V, Vl = s.Vl, cols = kernels::vocab_shard_real_columns(V, r * Vl, Vl);
  Case c{cat("crossentropy_shard_max_shard", r)};
  c.in("logits", s.logits[r]).out("mx", nans(N), 0.0, 0.0);
  c.run = [=](const Backend& be, const Args& a) {
    be.crossentropy_shard_max(a.f("mx"), a.f("logits"), N, V, r * Vl, Vl);
  };
  c.naive = [=](Host& h) {
    for (int i = 0; i < N; i++) {
      const double* row = &h["logits"][(size_t)i * Vl];
      h["mx"][i] = cols ? *std::max_element(row, row + cols) : -INFINITY;
    }
  };
  return c;
}

Case crossentropy_shard_sums(int r) {
  const CeShards s;
  const int N = s.N, V = s.V, TP = s.TP, Vl = s.Vl, cols = kernels::vocab_shard_real_columns(V, r * Vl, Vl);
  Case c{cat("crossentropy_shard_sums_shard", r)};
  c.in("logits", s.logits[r]).in("mxs", s.mxs).in("targets", s.targets);
  c.out("sums", Vec((size_t)2 * N, 7.0f), 1e-5, 2e-5).out("mx", nans(N), 0.0, 0.0);
  c.run = [=](const Backend& be, const Args& a) {
    be.crossentropy_shard_sums(a.f("sums"), a.f("mx"), a.f("mxs"), a.f("logits"), a.i("targets"), N, TP, V, r * Vl,
                               Vl, kCeIgnore);
  };
  c.naive = [=](Host& h) {
    for (int i = 0; i < N; i++) {
      double m = -INFINITY, sum = 0.0;
      for (int k = 0; k < TP; k++) m = std::max(m, h["mxs"][(size_t)k * N + i]);
      const double* row = &h["logits"][(size_t)i * Vl];
      const int t = h.i("targets")[i], local = t - r * Vl;
      for (int j = 0; j < cols; j++) sum += std::exp(row[j] - m);
      h["mx"][i] = m;
      h["sums"][i] = t == kCeIgnore ? 0.0 : sum;
      h["sums"][N + i] = t != kCeIgnore && local >= 0 && local < Vl ? row[local] : 0.0;
    }
  };
  return c;
}

Case crossentropy_shard_finish(int r, float dloss) {
  const CeShards s;
  const int N = s.N, V = s.V, Vl = s.Vl, cols = kernels::vocab_shard_real_columns(V, r * Vl, Vl);
  Case c{cat("crossentropy_shard_finish_shard", r, dloss == 0.0f ? "_forward" : "")};
  c.in("mx", s.mx).in("sums", s.sums).in("targets", s.targets);
  c.out("logits", s.logits[r], 1e-5, 2e-5).out("losses", nans(N), 1e-5, 2e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.crossentropy_shard_finish(a.f("logits"), a.f("losses"), a.f("mx"), a.f("sums"), a.i("targets"), N, V, r * Vl,
                                 Vl, dloss, kCeIgnore);
  };
  c.naive = [=](Host& h) {  // losses = log(sum) + max - target logit; dlogits = dloss (softmax - onehot)
    for (int i = 0; i < N; i++) {
      const int t = h.i("targets")[i];
      const double m = h["mx"][i], sum = h["sums"][i];
      h["losses"][i] = t == kCeIgnore ? 0.0 : std::log(sum) + m - h["sums"][N + i];
      if (dloss == 0.0f) continue;
      for (int j = 0; j < Vl; j++) {
        double& x = h["logits"][(size_t)i * Vl + j];
        x = j < cols && t != kCeIgnore ? dloss * (std::exp(x - m) / sum - (j + r * Vl == t)) : 0.0;
      }
    }
  };
  return c;
}

// ---- optimizer and norms ----------------------------------------------------------------------

// three steps of AdamW (t = 1, 2, 3) from zero moments
Case adamw_update() {
  const size_t n = kN;
  const float lr = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gscale = 0.7f;
  Case c{"adamw_update"};
  c.in("g1", randn(n, 51)).in("g2", randn(n, 52)).in("g3", randn(n, 53));
  c.out("params", randn(n, 50), 2e-6, 1e-6).out("m", Vec(n, 0.0f), 2e-6, 1e-6).out("v", Vec(n, 0.0f), 2e-6, 1e-6);
  c.run = [=](const Backend& be, const Args& a) {
    for (int t = 1; t <= 3; t++)
      be.adamw_update(a.f("params"), a.f(cat("g", t)), a.f("m"), a.f("v"), n, lr, b1, b2, eps, wd, gscale, t);
  };
  c.naive = [=](Host& h) {
    DVec &p = h["params"], &m = h["m"], &v = h["v"];
    for (int t = 1; t <= 3; t++) {
      const DVec& g = h[cat("g", t)];
      for (size_t i = 0; i < n; i++) {
        const double gi = g[i] * gscale;
        m[i] = b1 * m[i] + (1 - b1) * gi;
        v[i] = b2 * v[i] + (1 - b2) * gi * gi;
        const double mhat = m[i] / (1 - std::pow((double)b1, t)), vhat = v[i] / (1 - std::pow((double)b2, t));
        p[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * p[i]);
      }
    }
  };
  return c;
}

// sum of g^2 (returned, here written into `result`), twice: the same bits both times
Case global_norm_squared(size_t n) {
  Case c{cat("global_norm_squared_n", n)};
  c.in("g", randn(n, 60, 0.01f)).out("result", nans(2), 1e-6, 1e-6).relative();
  c.run = [=](const Backend& be, const Args& a) {
    const float r[2] = {be.global_norm_squared(a.f("g"), n), be.global_norm_squared(a.f("g"), n)};
    EXPECT_EQ(r[0], r[1]) << "not deterministic, n = " << n;
    be.from_host(a.f("result"), r, sizeof(r));
  };
  c.naive = [=](Host& h) {
    double s = 0.0;
    for (double x : h["g"]) s += x * x;
    h["result"] = {s, s};
  };
  return c;
}

// ---- the backbone: rope, head layernorm ------------------------------------------------------

// partial rotary (R < hs) in rows wider than the heads (ld > NH*hs, as inside qkv), large positions
struct RopeShape {
  static constexpr int B = 2, T = 33, NH = 3, hs = 24, R = 16, ld = 100, pos0 = 1000;
  static constexpr float base = 10000.0f;
  static constexpr size_t n = (size_t)B * T * ld;
};

// out's columns outside the heads keep their start values; in place: out is inp
Case rope_forward(bool in_place) {
  using S = RopeShape;
  Case c{in_place ? "rope_forward_in_place" : "rope_forward"};
  if (in_place) c.out("inp", randn(S::n, 90), 1e-6, 2e-5);
  else c.in("inp", randn(S::n, 90)).out("out", randn(S::n, 93), 1e-6, 2e-5);
  const std::string out = in_place ? "inp" : "out";
  c.run = [=](const Backend& be, const Args& a) {
    be.rope_forward(a.f(out), a.f("inp"), S::B, S::T, S::NH, S::hs, S::ld, S::R, S::base, S::pos0);
  };
  c.naive = [=](Host& h) {
    const DVec y = test_util::ref_rope(h["inp"], S::B, S::T, S::NH, S::hs, S::ld, S::R, S::base, S::pos0);
    for (size_t r = 0; r < (size_t)S::B * S::T; r++)
      std::copy_n(&y[r * S::ld], S::NH * S::hs, &h[out][r * S::ld]);
  };
  return c;
}

Case rope_backward() {
  using S = RopeShape;
  Case c{"rope_backward"};
  c.in("inp", randn(S::n, 90)).in("dout", randn(S::n, 91)).out("dinp", randn(S::n, 92), 1e-6);
  c.run = [=](const Backend& be, const Args& a) {
    be.rope_backward(a.f("dinp"), a.f("dout"), S::B, S::T, S::NH, S::hs, S::ld, S::R, S::base, S::pos0);
  };
  c.loss = [=](Host& h) {  // over the heads' columns: the kernel leaves the others alone
    return dot_columns(test_util::ref_rope(h["inp"], S::B, S::T, S::NH, S::hs, S::ld, S::R, S::base, S::pos0),
                       h["dout"], (size_t)S::B * S::T, S::NH * S::hs, S::ld);
  };
  c.grads = {{"inp", "dinp", true, 500}};
  return c;
}

// hs 40 (not a multiple of 32) inside rows wider than the heads (q of a qkv row); hs 64 packed
struct HeadLnShape {
  int N, NH, hs, ld;
  std::string name() const { return cat("hs", hs, "_ld", ld); }
  size_t n() const { return (size_t)N * ld; }
};
const HeadLnShape kHeadLnShapes[] = {{77, 3, 40, 3 * 3 * 40 + 5}, {50, 4, 64, 4 * 64}};

Vec head_ln_inputs(const HeadLnShape& s) {
  Vec x = randn(s.n(), 180, 2.0f);
  for (float& v : x) v += 3.0f;  // heads away from zero mean
  return x;
}

// out's columns outside the heads keep their start values; in place: out is inp
Case head_layernorm_forward(const HeadLnShape& s, bool in_place) {
  const size_t rows = (size_t)s.N * s.NH;
  Case c{"head_layernorm_forward_" + s.name() + (in_place ? "_in_place" : "")};
  c.in("weight", randn(s.hs, 181)).in("bias", randn(s.hs, 182));
  if (in_place) c.out("inp", head_ln_inputs(s), 1e-5, 2e-5);
  else c.in("inp", head_ln_inputs(s)).out("out", randn(s.n(), 187), 1e-5, 2e-5);
  c.out("mean", nans(rows), 1e-5).out("rstd", nans(rows), 1e-5);
  const std::string out = in_place ? "inp" : "out";
  c.run = [=](const Backend& be, const Args& a) {
    be.head_layernorm_forward(a.f(out), a.f("mean"), a.f("rstd"), a.f("inp"), a.f("weight"), a.f("bias"), s.N, s.NH,
                              s.hs, s.ld);
  };
  c.naive = [=](Host& h) {
    const DVec y = test_util::ref_head_ln(h["inp"], h["weight"], h["bias"], s.N, s.NH, s.hs, s.ld);
    for (size_t r = 0; r < (size_t)s.N; r++) std::copy_n(&y[r * s.ld], s.NH * s.hs, &h[out][r * s.ld]);
  };
  return c;
}

Case head_layernorm_backward(const HeadLnShape& s) {
  const size_t rows = (size_t)s.N * s.NH;
  Vec x = head_ln_inputs(s), w = randn(s.hs, 181), b = randn(s.hs, 182), out(s.n()), mean(rows), rstd(rows);
  kernels::cpu::head_layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), s.N, s.NH,
                                       s.hs, s.ld);
  Case c{"head_layernorm_backward_" + s.name()};  // from the CPU's statistics, so that only the backward is compared
  c.in("inp", x).in("weight", w).in("bias", b).in("mean", mean).in("rstd", rstd).in("dout", randn(s.n(), 183));
  c.out("dinp", randn(s.n(), 184), 1e-4).out("dweight", randn(s.hs, 185), 1e-4).out("dbias", randn(s.hs, 186), 1e-4);
  c.run = [=](const Backend& be, const Args& a) {
    be.head_layernorm_backward(a.f("dinp"), a.f("dweight"), a.f("dbias"), a.f("dout"), a.f("inp"), a.f("weight"),
                               a.f("mean"), a.f("rstd"), s.N, s.NH, s.hs, s.ld);
  };
  c.loss = [=](Host& h) {  // over the heads' columns: the kernel leaves the others alone
    return dot_columns(test_util::ref_head_ln(h["inp"], h["weight"], h["bias"], s.N, s.NH, s.hs, s.ld), h["dout"],
                       s.N, s.NH * s.hs, s.ld);
  };
  c.grads = {{"inp", "dinp", true, 300}, {"weight", "dweight", true}, {"bias", "dbias", true}};
  return c;
}

// ---- bf16 rounding ----------------------------------------------------------------------------

// Stochastic rounding with the bits of (seed, step, offset + i): the whole of x, or a shard from
// element 13 on with its global offset (the same bits as within the whole). The special values keep
// their meaning; seed and step use their upper 32 bits; the offset is past 2^32, not a multiple of 8.
Case bf16_round_stochastic(size_t first) {
  const size_t n = kN;
  const uint64_t seed = 0x123456789abcdef1ull, step = (1ull << 32) + 7, offset = (5ull << 32) + 3;
  Vec x = randn(n, 140, 10.0f);
  const Vec special = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-40f, -1e-40f, 3.0e38f, -3.0e38f, 1.0f};
  std::copy(special.begin(), special.end(), x.begin());
  Case c{first ? "bf16_round_stochastic_shard" : "bf16_round_stochastic"};
  c.in("inp", x).out("out", std::vector<bf16>(n - first), 0.0);
  c.run = [=](const Backend& be, const Args& a) {
    be.bf16_round_stochastic(a.h("out"), a.f("inp") + first, n - first, seed, step, offset + first);
  };
  c.naive = [=](Host& h) {
    for (size_t i = 0; i < n - first; i++)
      h["out"][i] = kernels::bf16_to_float(kernels::bf16_round_stochastic_bits(
          float(h["inp"][first + i]), kernels::stochastic_round_bits(seed, step, offset + first + i)));
  };
  return c;
}

// ---- layout -----------------------------------------------------------------------------------

// Token rows of stride ld holding NH heads of hs floats from column `first` (qkv's k block, say)
struct LayoutShape {
  static constexpr int B = 2, T = 5, NH = 3, hs = 4, first = 7, ld = first + NH * hs + 3;
  static size_t head_at(int b, int h, int t, int d) { return ((size_t)(b * NH + h) * T + t) * hs + d; }
  static size_t row_at(int b, int h, int t, int d) { return (size_t)(b * T + t) * ld + first + h * hs + d; }
  template <class F>
  static void each(F f) {
    for (int b = 0; b < B; b++)
      for (int h = 0; h < NH; h++)
        for (int t = 0; t < T; t++)
          for (int d = 0; d < hs; d++) f(head_at(b, h, t, d), row_at(b, h, t, d));
  }
};

Case split_heads() {
  using S = LayoutShape;
  Case c{"split_heads"};
  c.in("rows", randn((size_t)S::B * S::T * S::ld, 40));
  c.out("heads", nans((size_t)S::B * S::NH * S::T * S::hs), 0.0, 0.0);
  c.run = [=](const Backend& be, const Args& a) {
    be.split_heads(a.f("heads"), a.f("rows") + S::first, S::B, S::T, S::NH, S::hs, S::ld);
  };
  c.naive = [=](Host& h) { S::each([&](size_t hd, size_t row) { h["heads"][hd] = h["rows"][row]; }); };
  return c;
}

// the columns outside the heads keep their start values
Case merge_heads(int accumulate) {
  using S = LayoutShape;
  Case c{accumulate ? "merge_heads_accumulate" : "merge_heads"};
  c.in("heads", randn((size_t)S::B * S::NH * S::T * S::hs, 40));
  c.out("rows", randn((size_t)S::B * S::T * S::ld, 41), 0.0, 1e-7);
  c.run = [=](const Backend& be, const Args& a) {
    be.merge_heads(a.f("rows") + S::first, a.f("heads"), S::B, S::T, S::NH, S::hs, S::ld, accumulate);
  };
  c.naive = [=](Host& h) {
    S::each([&](size_t hd, size_t row) { h["rows"][row] = (accumulate ? h["rows"][row] : 0.0) + h["heads"][hd]; });
  };
  return c;
}

// out = a out + b inp over N rows of C: contiguous, strided, a broadcast row of inp (ldi 0), in
// place; a == 0 must not read out (its C columns start NaN)
Case axpby_rows(const std::string& what, float alpha, float beta, size_t ldo, size_t ldi, bool in_place = false) {
  const size_t N = 6;
  const int C = 37;
  Vec out = randn(N * ldo, 42);
  if (alpha == 0.0f)
    for (size_t r = 0; r < N; r++) std::fill(out.begin() + r * ldo, out.begin() + r * ldo + C, NAN);
  Case c{"axpby_rows_" + what};
  c.out("out", out, 1e-6, 1e-5);
  if (!in_place) c.in("inp", randn(ldi ? N * ldi : (size_t)C, 43));
  const std::string inp = in_place ? "out" : "inp";
  c.run = [=](const Backend& be, const Args& a) { be.axpby_rows(a.f("out"), a.f(inp), alpha, beta, N, C, ldo, ldi); };
  c.naive = [=](Host& h) {
    DVec& o = h["out"];
    const DVec x = h[inp];
    for (size_t r = 0; r < N; r++)
      for (int k = 0; k < C; k++)
        o[r * ldo + k] = (alpha == 0.0f ? 0.0 : alpha * o[r * ldo + k]) + beta * x[r * ldi + k];
  };
  return c;
}

// ---- KVM ---------------------------------------------------------------------------------------

using test_util::KvmCase;

Case kvm_inputs(const std::string& name, const KvmCase& k, uint32_t seed) {
  const test_util::KvmInputs in(k, seed);
  Case c{name};
  c.in("q", in.q).in("k", in.k).in("v", in.v).in("g", in.g).in("w", in.w).in("b", in.b);
  c.in("tf", in.tf).in("ts", in.ts).in("dout", in.dout);
  return c;
}

void kvm_forward_on(const Backend& be, const Args& a, float* out, kernels::KvmTape& tape, const KvmCase& k) {
  be.kvm_forward(out, tape, a.f("q"), a.f("k"), a.f("v"), a.f("g"), a.f("w"), a.f("b"), a.f("tf"), a.f("ts"), k.B,
                 k.H, k.T, k.D, k.p);
}

Case kvm_forward(const KvmCase& k) {
  Case c = kvm_inputs("kvm_forward_" + k.name, k, 100);
  c.out("out", nans((size_t)k.B * k.H * k.T * k.D), 1e-4);
  c.run = [=](const Backend& be, const Args& a) {
    kernels::KvmTape tape;
    kvm_forward_on(be, a, a.f("out"), tape, k);
  };
  return c;
}

// the backward of the same backend's forward (its tape), onto random gradients
Case kvm_backward(const KvmCase& k) {
  const size_t N = (size_t)k.B * k.H * k.T * k.D, NG = (size_t)k.B * k.H * k.T;
  Case c = kvm_inputs("kvm_backward_" + k.name, k, 200);
  c.out("out", nans(N), 1e-4).out("dq", randn(N, 300), 1e-3).out("dk", randn(N, 301), 1e-3);
  c.out("dv", randn(N, 302), 1e-3).out("dg", randn(NG, 303), 1e-3).out("dw", randn(k.D, 304), 1e-3);
  c.out("db", randn(k.D, 305), 1e-3).out("dtf", randn(k.H, 306), 1e-3).out("dts", randn(k.H, 307), 1e-3);
  c.run = [=](const Backend& be, const Args& a) {
    kernels::KvmTape tape;
    kvm_forward_on(be, a, a.f("out"), tape, k);
    be.kvm_backward(a.f("dq"), a.f("dk"), a.f("dv"), a.f("dg"), a.f("dw"), a.f("db"), a.f("dtf"), a.f("dts"),
                    a.f("dout"), tape, a.f("q"), a.f("k"), a.f("v"), a.f("g"), a.f("w"), a.f("b"), a.f("tf"),
                    a.f("ts"), k.B, k.H, k.T, k.D, k.p);
  };
  return c;
}

// one sequence (B = 1), token by token: position t's rows of (H,T,D) gathered into (H,D)
Case kvm_decode_step(KvmCase k) {
  k.B = 1;
  const int H = k.H, T = k.T, D = k.D;
  const size_t row = D * sizeof(float), stride = (size_t)T * row;
  Case c = kvm_inputs("kvm_decode_step_" + k.name, k, 600);
  c.out("out", nans((size_t)H * T * D), 1e-4);
  c.run = [=](const Backend& be, const Args& a) {
    kernels::KvmCache cache(H, D, k.p);
#ifdef KVMTRAIN_HAS_CUDA
    if (!be.host) kernels::cuda::kvm_decode_init(cache, H, D);
#endif
    DeviceBuffer q(be, (size_t)H * D), kk(be, (size_t)H * D), v(be, (size_t)H * D), g(be, H), out(be, (size_t)H * D);
    for (int t = 0; t < T; t++) {
      be.copy_rows(q.data(), row, a.f("q") + (size_t)t * D, stride, row, H);
      be.copy_rows(kk.data(), row, a.f("k") + (size_t)t * D, stride, row, H);
      be.copy_rows(v.data(), row, a.f("v") + (size_t)t * D, stride, row, H);
      be.copy_rows(g.data(), sizeof(float), a.f("g") + t, T * sizeof(float), sizeof(float), H);
      be.kvm_decode_step(out.data(), cache, q.data(), kk.data(), v.data(), g.data(), a.f("w"), a.f("b"), a.f("tf"),
                         a.f("ts"), k.p);
      be.copy_rows(a.f("out") + (size_t)t * D, stride, out.data(), row, row, H);
    }
  };
  return c;
}

// ---- the table --------------------------------------------------------------------------------

const std::vector<Case>& cases() {
  static const std::vector<Case> all = [] {
    std::vector<Case> cs = {
        unary_forward("gelu_forward", &Backend::gelu_forward, randn(kN, 6, 3.0f), gelu, 1e-5),
        unary_backward("gelu_backward", &Backend::gelu_backward, randn(kN, 6, 3.0f), gelu, false, 1e-5, 7),
        unary_forward("relu2_forward", &Backend::relu2_forward, randn(kN, 80, 2.0f), relu2, 0.0),
        unary_backward("relu2_backward", &Backend::relu2_backward, randn(kN, 80, 2.0f), relu2, false, 1e-6, 81),
        unary_forward("elu_gate_forward", &Backend::elu_gate_forward, elu_gate_inputs(), elu_gate, 1e-6),
        unary_backward("elu_gate_backward", &Backend::elu_gate_backward, elu_gate_inputs(), elu_gate, true, 1e-5, 161),
        scaled_residual_forward(false),
        scaled_residual_forward(true),
        token_shift_forward(false),
        token_shift_forward(true),
        token_shift_backward(),
        layernorm_forward(),
        layernorm_backward(),
        matmul_forward(true, 0),
        matmul_forward(false, 0),
        matmul_forward(true, 1),
        matmul_forward_bf16(true, kMmN),
        matmul_forward_bf16(false, kMmN),
        matmul_forward_bf16(true, 2 * kMmN + 3),  // after the smaller ones: the bf16 scratch grows
        matmul_gelu_forward(true, false),
        matmul_gelu_forward(false, false),
        matmul_gelu_forward(true, true),
        matmul_gelu_forward(false, true),
        attention_decode(0, 48),
        attention_decode(17, 17),
        crossentropy_forward_backward(0.0f),
        crossentropy_forward_backward(1.0f / kCeN),
        adamw_update(),
        global_norm_squared(1),
        global_norm_squared(1000),
        global_norm_squared(1000003),
        rope_forward(false),
        rope_forward(true),
        rope_backward(),
        bf16_round_stochastic(0),
        bf16_round_stochastic(13),
        split_heads(),
        merge_heads(0),
        merge_heads(1),
        axpby_rows("contiguous", 0.75f, -1.5f, 37, 37),
        axpby_rows("contiguous_a0", 0.0f, 2.0f, 37, 37),
        axpby_rows("strided", 0.5f, 0.25f, 42, 46),
        axpby_rows("strided_a0", 0.0f, -0.5f, 42, 46),
        axpby_rows("broadcast_row", 1.0f, 1.0f, 42, 0),
        axpby_rows("in_place", 0.5f, 2.0f, 37, 37, true),
    };
    for (bool bf16 : {false, true})
      for (bool bias : {true, false})
        for (bool accumulate : {true, false}) cs.push_back(matmul_backward(bias, accumulate, bf16));
    for (const AttentionShape& s : kAttentionShapes)
      cs.push_back(attention_forward(s)), cs.push_back(attention_backward(s));
    for (const HeadLnShape& s : kHeadLnShapes)
      cs.push_back(head_layernorm_forward(s, false)), cs.push_back(head_layernorm_backward(s));
    for (const HeadLnShape& s : kHeadLnShapes) cs.push_back(head_layernorm_forward(s, true));
    for (bool shard : {false, true})
      for (bool wpe : {true, false})
        cs.push_back(encoder_forward({shard, wpe})), cs.push_back(encoder_backward({shard, wpe}));
    for (int r = 0; r < CeShards::TP; r++) {
      cs.push_back(crossentropy_shard_max(r)), cs.push_back(crossentropy_shard_sums(r));
      cs.push_back(crossentropy_shard_finish(r, 0.0f)), cs.push_back(crossentropy_shard_finish(r, 1.0f / kCeN));
    }
    for (const KvmCase& k : test_util::kvm_cases())
      cs.push_back(kvm_forward(k)), cs.push_back(kvm_backward(k)), cs.push_back(kvm_decode_step(k));
    return cs;
  }();
  return all;
}

// ---- the runner -------------------------------------------------------------------------------

DVec values(Type t, const std::vector<unsigned char>& bytes) {
  const size_t n = bytes.size() / size_of(t);
  DVec v(n);
  for (size_t i = 0; i < n; i++) {
    if (t == Type::f32) v[i] = reinterpret_cast<const float*>(bytes.data())[i];
    if (t == Type::i32) v[i] = reinterpret_cast<const int*>(bytes.data())[i];
    if (t == Type::bf16) v[i] = kernels::bf16_to_float(reinterpret_cast<const bf16*>(bytes.data())[i]);
  }
  return v;
}

// A guard element of the i-th buffer: a quiet NaN whose payload is the buffer's own, so that a NaN
// a kernel read from another buffer's guard and wrote out of bounds does not look like this guard.
std::vector<unsigned char> guard_element(Type t, size_t i) {
  const uint32_t f = 0x7fc0de00u + uint32_t(i % 255 + 1);
  const uint16_t h = uint16_t(0x7fc0u + i % 63 + 1);
  std::vector<unsigned char> e(size_of(t));
  std::memcpy(e.data(), t == Type::bf16 ? static_cast<const void*>(&h) : &f, e.size());
  return e;
}

// A case's buffers in a backend's memory, each between two guards, and their contents after a run.
class Uploaded {
 public:
  Uploaded(const Case& c, const Backend& be) : c_(c), be_(be) {
    for (const Buffer& b : c.bufs) {
      const size_t g = kGuard * size_of(b.type);
      std::vector<unsigned char> host = guarded(b, mem_.size());
      mem_.emplace_back(be, (host.size() + sizeof(float) - 1) / sizeof(float));
      be.from_host(mem_.back().data(), host.data(), host.size());
      args.ptr[b.name] = reinterpret_cast<unsigned char*>(mem_.back().data()) + g;
    }
  }
  // Each buffer's contents after the run; fails the test where a guard or an input changed, or an
  // fp32 output holds a NaN (those that start NaN must be written).
  std::vector<std::vector<unsigned char>> results() const {
    std::vector<std::vector<unsigned char>> out;
    for (size_t i = 0; i < c_.bufs.size(); i++) {
      const Buffer& b = c_.bufs[i];
      std::vector<unsigned char> want = guarded(b, i), got(want.size());
      be_.to_host(got.data(), mem_[i].data(), got.size());
      const size_t g = kGuard * size_of(b.type), n = b.bytes.size();
      EXPECT_TRUE(std::equal(got.begin(), got.begin() + g, want.begin()) &&
                  std::equal(got.end() - g, got.end(), want.end() - g))
          << c_.name << " on " << be_.name << ": " << b.name << " written out of bounds";
      out.emplace_back(got.begin() + g, got.begin() + g + n);
      EXPECT_TRUE(b.output || out.back() == b.bytes)
          << c_.name << " on " << be_.name << ": input " << b.name << " changed";
      if (b.output && b.type == Type::f32) {
        const DVec v = values(b.type, out.back());
        EXPECT_TRUE(std::none_of(v.begin(), v.end(), [](double x) { return std::isnan(x); }))
            << c_.name << " on " << be_.name << ": " << b.name << " holds a NaN";
      }
    }
    return out;
  }
  Args args;

 private:
  static std::vector<unsigned char> guarded(const Buffer& b, size_t i) {
    const std::vector<unsigned char> e = guard_element(b.type, i);
    std::vector<unsigned char> host;
    for (size_t k = 0; k < kGuard; k++) host.insert(host.end(), e.begin(), e.end());
    host.insert(host.end(), b.bytes.begin(), b.bytes.end());
    for (size_t k = 0; k < kGuard; k++) host.insert(host.end(), e.begin(), e.end());
    return host;
  }
  const Case& c_;
  const Backend& be_;
  std::vector<DeviceBuffer> mem_;
};

Host host_of(const Case& c) {
  Host h;
  for (const Buffer& b : c.bufs) {
    if (b.type == Type::i32) {
      h.ints[b.name].resize(b.count());
      std::memcpy(h.ints[b.name].data(), b.bytes.data(), b.bytes.size());
    } else {
      h.v[b.name] = values(b.type, b.bytes);
    }
  }
  return h;
}

// got against want: equal (infinities; NaN where want is NaN) or within tol (1 + |want|) (tol
// |want| when relative); the first mismatches are named.
void expect_values(const DVec& got, const DVec& want, double tol, bool relative, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); i++) {
    const double err = std::abs(got[i] - want[i]), bound = tol * ((relative ? 0.0 : 1.0) + std::abs(want[i]));
    if (got[i] == want[i] || (std::isnan(want[i]) && std::isnan(got[i])) || err <= bound) continue;
    if (bad++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i] << " (tol " << tol << ")";
  }
  EXPECT_EQ(bad, 0u) << what << ": elements out of tolerance";
}

#ifdef KVMTRAIN_HAS_CUDA
bool cuda_visible() { return kernels::cuda::device_count() > 0; }
#endif

using Param = std::tuple<size_t, Backend::Device>;  // (case, backend)

class BackendOps : public ::testing::TestWithParam<Param> {};

TEST_P(BackendOps, Run) {
  const Case& c = cases()[std::get<0>(GetParam())];
  const Backend::Device backend = std::get<1>(GetParam());
  if (backend == Backend::Device::cuda) {
#ifdef KVMTRAIN_HAS_CUDA
    if (!cuda_visible()) GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount found none";
#else
    GTEST_SKIP() << "the CUDA backend is not built (configure with -DKVMTRAIN_CUDA=ON)";
#endif
  }
  const Backend& be = backend_for(backend);
  Uploaded up(c, be);
  c.run(be, up.args);
  const auto got = up.results();
  if (be.host) {  // the CPU against the naive reference
    if (!c.naive) return;
    Host h = host_of(c);
    c.naive(h);
    for (size_t i = 0; i < c.bufs.size(); i++) {
      const Buffer& b = c.bufs[i];
      if (b.output && b.naive_tol >= 0)
        expect_values(values(b.type, got[i]), h[b.name], b.naive_tol, b.relative,
                      b.name + " against the naive reference");
    }
    return;
  }
  Uploaded twin(c, cpu_backend());  // another backend against the CPU twin
  c.run(cpu_backend(), twin.args);
  const auto want = twin.results();
  for (size_t i = 0; i < c.bufs.size(); i++) {
    const Buffer& b = c.bufs[i];
    if (!b.output) continue;
    if (b.type == Type::bf16)
      EXPECT_TRUE(got[i] == want[i]) << b.name << ": not the CPU's bits";
    else
      expect_values(values(b.type, got[i]), values(b.type, want[i]), b.tol, b.relative,
                    b.name + " against the CPU twin");
  }
}

std::vector<size_t> indices(bool with_gradients_only) {
  std::vector<size_t> ix;
  for (size_t i = 0; i < cases().size(); i++)
    if (!with_gradients_only || cases()[i].loss) ix.push_back(i);
  return ix;
}

INSTANTIATE_TEST_SUITE_P(Kernels, BackendOps,
                         ::testing::Combine(::testing::ValuesIn(indices(false)),
                                            ::testing::Values(Backend::Device::cpu, Backend::Device::cuda)),
                         [](const ::testing::TestParamInfo<Param>& info) {
                           const bool cuda = std::get<1>(info.param) == Backend::Device::cuda;
                           return cases()[std::get<0>(info.param)].name + (cuda ? "_cuda" : "_cpu");
                         });

class Gradient : public ::testing::TestWithParam<size_t> {};

TEST_P(Gradient, FiniteDifferences) {
  const Case& c = cases()[GetParam()];
  Uploaded up(c, cpu_backend());
  c.run(cpu_backend(), up.args);
  const auto got = up.results();
  Host h = host_of(c);
  for (const Grad& g : c.grads) {
    size_t i = 0;
    while (c.bufs[i].name != g.grad) i++;
    const DVec after = values(Type::f32, got[i]), start = values(Type::f32, c.bufs[i].bytes);
    const Vec gotf(after.begin(), after.end());
    const Vec g0 = g.accumulates ? Vec(start.begin(), start.end()) : Vec(after.size(), 0.0f);
    test_util::expect_fd_grad(gotf, g0, h[g.input], [&] { return c.loss(h); }, kGradTol,
                              (c.name + " " + g.grad).c_str(), g.samples);
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, Gradient, ::testing::ValuesIn(indices(true)),
                         [](const ::testing::TestParamInfo<size_t>& info) { return cases()[info.param].name; });

// ---- perf mode --------------------------------------------------------------------------------

// Every case on every backend present: the mean time of a run (repeated for at least 0.1 s after a
// warm-up), the bytes of its buffers (each counted once) per second, and FLOP/s where counted.
int perf() {
  std::vector<const Backend*> backends = {&cpu_backend()};
#ifdef KVMTRAIN_HAS_CUDA
  if (cuda_visible()) backends.push_back(&backend_for(Backend::Device::cuda));
#endif
  std::printf("%-52s %-7s %10s %10s %10s\n", "case", "backend", "ms", "GB/s", "GFLOP/s");
  for (const Case& c : cases())
    for (const Backend* be : backends) {
      Uploaded up(c, *be);
      float sync = 0;
      auto run = [&] {
        c.run(*be, up.args);
        be->to_host(&sync, up.args.ptr.begin()->second, sizeof(float));  // waits for the kernels
      };
      run();
      int reps = 0;
      const auto t0 = std::chrono::steady_clock::now();
      double s = 0;
      do {
        run(), reps++;
        s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      } while (s < 0.1 || reps < 3);
      double bytes = 0;
      for (const Buffer& b : c.bufs) bytes += b.bytes.size();
      const double ms = 1e3 * s / reps;
      std::printf("%-52s %-7s %10.4f %10.2f", c.name.c_str(), be->name, ms, bytes / (ms * 1e6));
      if (c.flops > 0) std::printf(" %10.2f", c.flops / (ms * 1e6));
      std::printf("\n");
    }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; i++)
    if (std::string(argv[i]) == "--perf") return perf();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
