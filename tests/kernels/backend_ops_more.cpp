// The kernel test table: the cases of cross-entropy, optimizer and norms, RoPE, head layernorm, bf16 rounding, layout and KVM (backend_ops.h).
#include "tests/kernels/backend_ops.h"

namespace backend_ops {

namespace {

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

// sum of g^2 over ranges of g (returned, here written into `result`), twice: the same bits both
// times. One range, the whole of g; or several, as the gradient tensors a rank counts: apart,
// adjacent and empty ones.
Case global_norm_squared(size_t n, bool several) {
  Case c{cat("global_norm_squared_n", n, several ? "_ranges" : "")};
  const std::vector<kernels::IndexRange> ranges =
      several ? std::vector<kernels::IndexRange>{{3, n / 3}, {n / 3, n / 3}, {n / 3 + 7, n / 2}, {n / 2, n}}
              : std::vector<kernels::IndexRange>{{0, n}};
  c.in("g", randn(n, 60, 0.01f)).out("result", nans(2), 1e-6, 1e-6).relative();
  c.run = [=](const Backend& be, const Args& a) {
    const int count = int(ranges.size());
    const float r[2] = {float(be.global_norm_squared(a.f("g"), ranges.data(), count)),
                        float(be.global_norm_squared(a.f("g"), ranges.data(), count))};
    EXPECT_EQ(r[0], r[1]) << "not deterministic, n = " << n;
    be.from_host(a.f("result"), r, sizeof(r));
  };
  c.naive = [=](Host& h) {
    double s = 0.0;
    for (const kernels::IndexRange& r : ranges)
      for (size_t i = r.begin; i < r.end; i++) s += h["g"][i] * h["g"][i];
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

std::string rope_suffix(kernels::RopeVariant v) { return v == kernels::RopeVariant::paper ? "_paper" : ""; }

// out's columns outside the heads keep their start values; in place: out is inp
Case rope_forward(bool in_place, kernels::RopeVariant variant) {
  using S = RopeShape;
  const bool paper = variant == kernels::RopeVariant::paper;
  Case c{(in_place ? "rope_forward_in_place" : "rope_forward") + rope_suffix(variant)};
  if (in_place) c.out("inp", randn(S::n, 90), 1e-6, 2e-5);
  else c.in("inp", randn(S::n, 90)).out("out", randn(S::n, 93), 1e-6, 2e-5);
  const std::string out = in_place ? "inp" : "out";
  c.run = [=](const Backend& be, const Args& a) {
    be.rope_forward(a.f(out), a.f("inp"), S::B, S::T, S::NH, S::hs, S::ld, S::R, S::base, S::pos0, variant);
  };
  c.naive = [=](Host& h) {
    const DVec y = test_util::ref_rope(h["inp"], S::B, S::T, S::NH, S::hs, S::ld, S::R, S::base, S::pos0, paper);
    for (size_t r = 0; r < (size_t)S::B * S::T; r++)
      std::copy_n(&y[r * S::ld], S::NH * S::hs, &h[out][r * S::ld]);
  };
  return c;
}

Case rope_backward(kernels::RopeVariant variant) {
  using S = RopeShape;
  const bool paper = variant == kernels::RopeVariant::paper;
  Case c{"rope_backward" + rope_suffix(variant)};
  c.in("inp", randn(S::n, 90)).in("dout", randn(S::n, 91)).out("dinp", randn(S::n, 92), 1e-6);
  c.run = [=](const Backend& be, const Args& a) {
    be.rope_backward(a.f("dinp"), a.f("dout"), S::B, S::T, S::NH, S::hs, S::ld, S::R, S::base, S::pos0, variant);
  };
  c.loss = [=](Host& h) {  // over the heads' columns: the kernel leaves the others alone
    return dot_columns(test_util::ref_rope(h["inp"], S::B, S::T, S::NH, S::hs, S::ld, S::R, S::base, S::pos0, paper),
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

}  // namespace

std::vector<Case> more_cases() {
  std::vector<Case> cs = {
    crossentropy_forward_backward(0.0f),
    crossentropy_forward_backward(1.0f / kCeN),
    adamw_update(),
    global_norm_squared(1, false),
    global_norm_squared(1000, false),
    global_norm_squared(1000003, false),
    global_norm_squared(1000, true),
    global_norm_squared(1000003, true),
    rope_forward(false, kernels::RopeVariant::kvmtrain),
    rope_forward(true, kernels::RopeVariant::kvmtrain),
    rope_backward(kernels::RopeVariant::kvmtrain),
    rope_forward(false, kernels::RopeVariant::paper),
    rope_forward(true, kernels::RopeVariant::paper),
    rope_backward(kernels::RopeVariant::paper),
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
  for (const HeadLnShape& s : kHeadLnShapes)
    cs.push_back(head_layernorm_forward(s, false)), cs.push_back(head_layernorm_backward(s));
  for (const HeadLnShape& s : kHeadLnShapes) cs.push_back(head_layernorm_forward(s, true));
  for (int r = 0; r < CeShards::TP; r++) {
    cs.push_back(crossentropy_shard_max(r)), cs.push_back(crossentropy_shard_sums(r));
    cs.push_back(crossentropy_shard_finish(r, 0.0f)), cs.push_back(crossentropy_shard_finish(r, 1.0f / kCeN));
  }
  for (const KvmCase& k : test_util::kvm_cases())
    cs.push_back(kvm_forward(k)), cs.push_back(kvm_backward(k)), cs.push_back(kvm_decode_step(k));
  return cs;
}

}  // namespace backend_ops
