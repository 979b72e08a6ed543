// The kernel test table: the cases of elementwise kernels, token shift, value residual, encoder, layernorm, matmul and
// attention (backend_ops.h).
#include "tests/kernels/backend_ops.h"

namespace backend_ops {

namespace {

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

using kernels::TokenShiftForm;
using kernels::ValueResidualMode;

std::string form_name(TokenShiftForm form) {  // mix_zero, the first form, names none
  return form == TokenShiftForm::delta_zero ? "_delta_zero" : form == TokenShiftForm::delta_first ? "_delta_first" : "";
}

Case token_shift_forward(TokenShiftForm form, bool with_prev) {
  const int B = kShiftB, T = kShiftT, C = kShiftC;
  const size_t n = (size_t)B * T * C;
  Case c{"token_shift_forward" + form_name(form) + (with_prev ? "_prev" : "")};
  c.in("inp", randn(n, 170)).in("prev", randn((size_t)B * C, 171)).in("mix", uniform(C, 175));
  c.out("out", nans(n), 1e-6, 2e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.token_shift_forward(a.f("out"), a.f("inp"), with_prev ? a.f("prev") : nullptr, a.f("mix"), B, T, C, form);
  };
  c.naive = [=](Host& h) {
    h["out"] = test_util::ref_shift(h["inp"], with_prev ? &h["prev"] : nullptr, h["mix"], B, T, C, form);
  };
  return c;
}

Case token_shift_backward(TokenShiftForm form) {
  const int B = kShiftB, T = kShiftT, C = kShiftC;
  const size_t n = (size_t)B * T * C;
  Case c{"token_shift_backward" + form_name(form)};
  c.in("inp", randn(n, 170)).in("mix", uniform(C, 175)).in("dout", randn(n, 172));
  c.out("dinp", randn(n, 173), 1e-6).out("dmix", randn(C, 174), 1e-4);
  c.run = [=](const Backend& be, const Args& a) {
    be.token_shift_backward(a.f("dinp"), a.f("dmix"), a.f("dout"), a.f("inp"), a.f("mix"), B, T, C, form);
  };
  c.loss = [=](Host& h) {
    return dot(test_util::ref_shift(h["inp"], nullptr, h["mix"], B, T, C, form), h["dout"]);
  };
  c.grads = {{"inp", "dinp", true, 500}, {"mix", "dmix", true}};
  return c;
}

// ---- value residual ---------------------------------------------------------------------------

// N=111 tokens of C=100; v (and dv) the columns [C, 2C) of rows of 2C, out and dout the columns
// [2C, 3C) of rows of 3C (qkv's v), so that a wrong stride shows
constexpr int kVresN = 111, kVresC = 100;

// a strided buffer of rows of ld: `window` in the columns [off, off+C), `rest` elsewhere
Vec strided(const Vec& window, float rest, int ld, int off) {
  const int N = kVresN, C = kVresC;
  Vec v((size_t)N * ld, rest);
  for (int r = 0; r < N; r++)
    for (int col = 0; col < C; col++) v[(size_t)r * ld + off + col] = window[(size_t)r * C + col];
  return v;
}

// the inputs of both directions: v, anchor, w, and z for rwkv
Case value_residual_inputs(const std::string& name, ValueResidualMode mode) {
  const int N = kVresN, C = kVresC;
  const size_t n = (size_t)N * C;
  const bool rwkv = mode == ValueResidualMode::rwkv;
  Case c{name + (rwkv ? "_rwkv" : "_linear")};
  c.in("v", strided(randn(n, 180), 0.0f, 2 * C, C)).in("anchor", randn(n, 181));
  c.in("w", rwkv ? randn(C, 183) : uniform(1, 183));
  if (rwkv) c.in("z", randn(n, 182));
  return c;
}

DVec ref_value_residual(Host& h, ValueResidualMode mode) {
  const DVec* z = mode == ValueResidualMode::rwkv ? &h["z"] : nullptr;
  return test_util::ref_value_residual(h["v"], kVresC, 2 * kVresC, h["anchor"], z, h["w"], kVresN, kVresC, mode);
}

Case value_residual_forward(ValueResidualMode mode) {
  const int N = kVresN, C = kVresC;
  const bool rwkv = mode == ValueResidualMode::rwkv;
  Case c = value_residual_inputs("value_residual_forward", mode);
  c.out("out", strided(nans((size_t)N * C), 0.5f, 3 * C, 2 * C), rwkv ? 1e-5 : 1e-6, rwkv ? 2e-5 : 1e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.value_residual_forward(a.f("out") + 2 * C, 3 * C, a.f("v") + C, 2 * C, a.f("anchor"), rwkv ? a.f("z") : nullptr,
                              a.f("w"), N, C, mode);
  };
  c.naive = [=](Host& h) {
    const DVec y = ref_value_residual(h, mode);
    for (int r = 0; r < N; r++)
      for (int col = 0; col < C; col++) h["out"][(size_t)r * 3 * C + 2 * C + col] = y[(size_t)r * C + col];
  };
  return c;
}

Case value_residual_backward(ValueResidualMode mode) {
  const int N = kVresN, C = kVresC;
  const size_t n = (size_t)N * C;
  const bool rwkv = mode == ValueResidualMode::rwkv;
  Case c = value_residual_inputs("value_residual_backward", mode);
  c.in("dout", strided(randn(n, 184), NAN, 3 * C, 2 * C));  // the columns around it must not be read
  // dv is written: zero around its columns, where the finite differences of v are zero too
  c.out("dv", strided(nans(n), 0.0f, 2 * C, C), rwkv ? 1e-5 : 1e-6).out("danchor", randn(n, 185), rwkv ? 1e-5 : 1e-6);
  c.out("dw", randn(rwkv ? C : 1, 187), 1e-4);
  if (rwkv) c.out("dz", nans(n), 1e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.value_residual_backward(a.f("dv") + C, 2 * C, a.f("danchor"), rwkv ? a.f("dz") : nullptr, a.f("dw"),
                               a.f("dout") + 2 * C, 3 * C, a.f("v") + C, 2 * C, a.f("anchor"), rwkv ? a.f("z") : nullptr,
                               a.f("w"), N, C, mode);
  };
  c.loss = [=](Host& h) {
    const DVec y = ref_value_residual(h, mode), &d = h["dout"];
    double s = 0.0;
    for (int r = 0; r < N; r++)
      for (int col = 0; col < C; col++) s += y[(size_t)r * C + col] * d[(size_t)r * 3 * C + 2 * C + col];
    return s;
  };
  c.grads = {{"v", "dv", false, 500}, {"anchor", "danchor", true, 500}, {"w", "dw", true}};
  if (rwkv) c.grads.push_back({"z", "dz", false, 500});
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
// must be asked for algorithms that take 4-byte aligned operands, not its default 256, and cuda
// copies the bias to an aligned buffer for the epilogue). IC 0: an empty product, out = bias.
Case matmul_forward(bool bias, int offset, int IC = kMmIC) {
  const int N = kMmN, OC = kMmOC;
  auto lead = [&](Vec v) {
    v.insert(v.begin(), offset, 0.0f);
    return v;
  };
  Case c{std::string("matmul_forward") + (bias ? "" : "_no_bias") + (offset ? "_unaligned" : "") +
         (IC == 0 ? "_IC0" : "")};
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
  Case c{std::string("matmul_forward_bf16") + (bias ? "" : "_no_bias") + (N > kMmN ? "_grown" : "") +
         (N == 0 ? "_N0" : "")};
  c.in("inp", randn((size_t)N * IC, 130)).in("weight", to_bf16(randn((size_t)OC * IC, 131, 0.1f)));
  c.in("bias", randn(OC, 132)).out("out", nans((size_t)N * OC), 1e-4, 1e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.matmul_forward_bf16(a.f("out"), a.f("inp"), a.h("weight"), bias ? a.f("bias") : nullptr, N, IC, OC);
  };
  c.naive = [=](Host& h) { h["out"] = ref_matmul(h, bias, true, N, IC, OC); };
  c.flops = 2.0 * N * IC * OC;
  return c;
}

// Without bias, also without dinp. Gradients written (accumulate false) start as NaN. IC 0: only
// dbias has elements.
Case matmul_backward(bool bias, bool accumulate, bool bf16, int IC = kMmIC) {
  const int N = kMmN, OC = kMmOC;
  auto start = [&](Vec v) { return accumulate ? v : nans(v.size()); };
  Case c{std::string(bf16 ? "matmul_backward_bf16" : "matmul_backward") + (bias ? "" : "_no_bias_no_dinp") +
         (accumulate ? "" : "_overwrite") + (IC == 0 ? "_IC0" : "")};
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
// of 8, the auxiliary leading dimension. IC 0: pre = bias.
Case matmul_gelu_forward(bool bias, bool bf16, int IC = 48) {
  const int N = 33, OC = 136;
  Case c{std::string(bf16 ? "matmul_gelu_forward_bf16" : "matmul_gelu_forward") + (bias ? "" : "_no_bias") +
         (IC == 0 ? "_IC0" : "")};
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
  int B, T, C, NH, window, block;
  std::string name() const {
    return cat("B", B, "_T", T, "_hs", C / NH, "_window", window, block ? cat("_block", block) : "");
  }
  // keys per query, roughly: a block window sees between window - block + 1 and window of them
  double keys() const { return window ? std::min<double>(T, block ? window - block / 2.0 : window) : T / 2.0; }
};
// hs 16 (lanes idle), 64 (GPT-2), 80 (not a multiple of 32); T not a multiple of any tile; a
// window of 17, and of 1 (each query sees only itself); block sliding windows of 3 chunks of 8, of
// one chunk of 16 (each query its own), and of 2 chunks of 48 over the CPU's 128-query tiles (the
// last queries of a tile see none of its first key tile's keys)
const AttentionShape kAttentionShapes[] = {{2, 77, 64, 4, 0, 0},  {1, 150, 128, 2, 0, 0}, {2, 70, 160, 2, 17, 0},
                                           {1, 40, 64, 1, 1, 0},  {2, 70, 64, 4, 24, 8},  {1, 45, 32, 2, 16, 16},
                                           {1, 260, 32, 2, 96, 48}};

Case attention_forward(const AttentionShape& s) {
  const size_t nqkv = (size_t)s.B * s.T * 3 * s.C, nout = (size_t)s.B * s.T * s.C, nlse = (size_t)s.B * s.NH * s.T;
  Case c{"attention_forward_" + s.name()};
  c.in("qkv", randn(nqkv, 70)).out("out", nans(nout), 1e-4, 2e-5).out("lse", nans(nlse), 1e-4, 2e-5);
  c.run = [=](const Backend& be, const Args& a) {
    be.attention_forward(a.f("out"), a.f("lse"), a.f("qkv"), s.B, s.T, s.C, s.NH, s.window, s.block);
  };
  c.naive = [=](Host& h) {
    h["out"] = test_util::ref_attention(h["qkv"], s.B, s.T, s.C, s.NH, s.window, s.block, &h["lse"]);
  };
  c.flops = 4.0 * s.B * s.T * s.keys() * s.C;
  return c;
}

Case attention_backward(const AttentionShape& s) {
  const size_t nqkv = (size_t)s.B * s.T * 3 * s.C, nout = (size_t)s.B * s.T * s.C, nlse = (size_t)s.B * s.NH * s.T;
  Vec qkv = randn(nqkv, 70), out(nout), lse(nlse);
  kernels::cpu::attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.window, s.block);
  Case c{"attention_backward_" + s.name()};  // from the CPU's out and lse, so that only the backward is compared
  c.in("qkv", qkv).in("out", out).in("lse", lse).in("dout", randn(nout, 71)).out("dqkv", randn(nqkv, 72), 1e-4);
  c.run = [=](const Backend& be, const Args& a) {
    be.attention_backward(a.f("dqkv"), a.f("dout"), a.f("qkv"), a.f("out"), a.f("lse"), s.B, s.T, s.C, s.NH,
                          s.window, s.block);
  };
  c.loss = [=](Host& h) {
    return dot(test_util::ref_attention(h["qkv"], s.B, s.T, s.C, s.NH, s.window, s.block), h["dout"]);
  };
  c.grads = {{"qkv", "dqkv", true, 100}};
  c.flops = 10.0 * s.B * s.T * s.keys() * s.C;
  return c;
}

// One token at position 40 over ring caches already holding earlier rows: full attention (cap 48),
// a window of 17 in a ring of exactly 17 (slot 40 % 17 = 6 overwritten, keys 24..40 read), and
// block windows: 3 chunks of 6 in a ring of 18 (keys 24..40, the chunk 36..41 unfinished), and 2
// chunks of 7 in a ring of 14 (keys 28..40, slot 40 % 14 = 12 overwritten)
Case attention_decode(int window, int cap, int block) {
  const int B = 2, C = 64, NH = 4, pos = 40, hs = C / NH;
  Case c{cat("attention_decode_window", window, block ? cat("_block", block) : "", "_cap", cap)};
  c.in("qkv", randn((size_t)B * 3 * C, 75)).out("out", nans((size_t)B * C), 1e-4, 2e-5);
  c.out("k_cache", randn((size_t)B * cap * C, 76), 0.0, 0.0).out("v_cache", randn((size_t)B * cap * C, 77), 0.0, 0.0);
  c.run = [=](const Backend& be, const Args& a) {
    be.attention_decode(a.f("out"), a.f("k_cache"), a.f("v_cache"), a.f("qkv"), B, C, NH, pos, cap, window,
                        block);
  };
  c.naive = [=](Host& h) {
    int first = 0;  // the first key the reference sees
    while (!test_util::ref_attention_visible(pos, first, window, block)) first++;
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

}  // namespace

std::vector<Case> dense_cases() {
  std::vector<Case> cs = {
    unary_forward("gelu_forward", &Backend::gelu_forward, randn(kN, 6, 3.0f), gelu, 1e-5),
    unary_backward("gelu_backward", &Backend::gelu_backward, randn(kN, 6, 3.0f), gelu, false, 1e-5, 7),
    unary_forward("relu2_forward", &Backend::relu2_forward, randn(kN, 80, 2.0f), relu2, 0.0),
    unary_backward("relu2_backward", &Backend::relu2_backward, randn(kN, 80, 2.0f), relu2, false, 1e-6, 81),
    unary_forward("elu_gate_forward", &Backend::elu_gate_forward, elu_gate_inputs(), elu_gate, 1e-6),
    unary_backward("elu_gate_backward", &Backend::elu_gate_backward, elu_gate_inputs(), elu_gate, true, 1e-5, 161),
    scaled_residual_forward(false),
    scaled_residual_forward(true),
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
    // zero sizes: no elements, an empty product (the bias alone) and no rows
    unary_forward("gelu_forward_N0", &Backend::gelu_forward, {}, gelu, 1e-5),
    unary_backward("gelu_backward_N0", &Backend::gelu_backward, {}, gelu, false, 1e-5, 7),
    unary_forward("relu2_forward_N0", &Backend::relu2_forward, {}, relu2, 0.0),
    unary_backward("elu_gate_backward_N0", &Backend::elu_gate_backward, {}, elu_gate, true, 1e-5, 161),
    matmul_forward(true, 0, 0),
    matmul_forward(false, 0, 0),
    matmul_gelu_forward(true, false, 0),
    matmul_gelu_forward(true, true, 0),
    matmul_forward_bf16(true, 0),
    matmul_backward(true, false, false, 0),
    matmul_backward(true, false, true, 0),
    attention_decode(0, 48, 0),
    attention_decode(17, 17, 0),
    attention_decode(18, 18, 6),
    attention_decode(14, 14, 7),
  };
  for (TokenShiftForm form : {TokenShiftForm::mix_zero, TokenShiftForm::delta_zero, TokenShiftForm::delta_first})
    cs.push_back(token_shift_forward(form, false)), cs.push_back(token_shift_forward(form, true)),
        cs.push_back(token_shift_backward(form));
  for (ValueResidualMode mode : {ValueResidualMode::linear, ValueResidualMode::rwkv})
    cs.push_back(value_residual_forward(mode)), cs.push_back(value_residual_backward(mode));
  for (bool bf16 : {false, true})
    for (bool bias : {true, false})
      for (bool accumulate : {true, false}) cs.push_back(matmul_backward(bias, accumulate, bf16));
  for (const AttentionShape& s : kAttentionShapes)
    cs.push_back(attention_forward(s)), cs.push_back(attention_backward(s));
  for (bool shard : {false, true})
    for (bool wpe : {true, false})
      cs.push_back(encoder_forward({shard, wpe})), cs.push_back(encoder_backward({shard, wpe}));
  return cs;
}

}  // namespace backend_ops
