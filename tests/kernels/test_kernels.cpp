// The CPU kernels against naive double-precision references (references.h), one loop per formula.
// Every kernel gets (a) its forward compared with the reference, (b) its backward compared with
// central differences of the reference (in double, so the differences themselves are accurate to
// ~1e-9) of a random linear functional L = sum_k w_k out_k, with dout = w, and (c) accumulation:
// gradient buffers start filled with random values g0 and must end at g0 + dL/dx.
// Tolerances: forward |got - ref| <= 1e-5 (1 + |ref|) (2e-5 where a float exp or tanh is
// involved), backward |got - g0 - fd| <= 2e-4 (1 + |fd|); fp32 round-off on these shapes is ~1e-6.
// split_heads and merge_heads only move data (merge is split's adjoint): compared exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/gemm_route.h"
#include "kernels/kernels.h"
#include "tests/kernels/references.h"
#include "tests/test_util.h"

namespace cpu = kernels::cpu;
using Vec = std::vector<float>;
using DVec = std::vector<double>;

namespace {

using test_util::dot;
using test_util::randn;
using test_util::to_double;

using test_util::expect_close;
using test_util::ref_attention;
using test_util::ref_crossentropy;
using test_util::ref_encoder;
using test_util::ref_gelu;
using test_util::ref_layernorm;
using test_util::ref_matmul;

constexpr double kFwdTol = 1e-5;
constexpr double kFwdTolTranscendental = 2e-5;
constexpr double kGradTol = 2e-4;

// (b) and (c): a kernel's gradient against central differences of the double reference
void expect_grad(const Vec& got, const Vec& g0, DVec& x, const std::function<double()>& loss, const char* what,
                 size_t samples = SIZE_MAX) {
  test_util::expect_fd_grad(got, g0, x, loss, kGradTol, what, samples);
}

// ---- tests ------------------------------------------------------------------------------------

TEST(Encoder, ForwardBackward) {
  const int B = 2, T = 5, C = 24, Vp = 11;
  std::vector<int> inp = {3, 0, 3, 10, 7, 3, 3, 1, 0, 9};  // repeats: dwte rows collect several positions
  // the whole vocabulary, then the two shards of a vocabulary-parallel split (tokens of both)
  for (auto [v0, Vl] : {std::pair{0, Vp}, std::pair{0, 6}, std::pair{6, Vp - 6}})
    for (bool positions : {true, false}) {
      SCOPED_TRACE(std::string(positions ? "learned positions" : "no wpe") + ", rows [" + std::to_string(v0) + ", " +
                   std::to_string(v0 + Vl) + ")");
      Vec wte = randn((size_t)Vl * C, 1), wpe = randn((size_t)T * C, 2);
      Vec out((size_t)B * T * C, 99.0f);
      cpu::encoder_forward(out.data(), inp.data(), wte.data(), positions ? wpe.data() : nullptr, B, T, C, v0, Vl);
      DVec dwte_ref = to_double(wte), dwpe_ref = to_double(wpe);
      auto ref = [&] { return ref_encoder(inp, dwte_ref, positions ? &dwpe_ref : nullptr, B, T, C, v0, Vl); };
      expect_close(out, ref(), kFwdTol, "out");

      Vec w = randn(out.size(), 3);
      Vec g0_wte = randn(wte.size(), 4), g0_wpe = randn(wpe.size(), 5);
      Vec dwte = g0_wte, dwpe = g0_wpe;
      cpu::encoder_backward(dwte.data(), positions ? dwpe.data() : nullptr, w.data(), inp.data(), B, T, C, v0, Vl);
      auto loss = [&] { return dot(ref(), w); };
      expect_grad(dwte, g0_wte, dwte_ref, loss, "dwte");
      if (!positions) continue;
      if (Vl == Vp) {
        expect_grad(dwpe, g0_wpe, dwpe_ref, loss, "dwpe");
      } else {  // a shard's dwpe takes every position, its zero rows included (all shards see the same dout)
        DVec want = to_double(g0_wpe);
        for (int bt = 0; bt < B * T; bt++)
          for (int c = 0; c < C; c++) want[(size_t)(bt % T) * C + c] += w[(size_t)bt * C + c];
        expect_close(dwpe, want, kFwdTol, "dwpe of a shard");
      }
    }
}

TEST(LayerNorm, ForwardBackward) {
  const int N = 7, C = 37;  // C not a multiple of the vector width
  Vec inp = randn((size_t)N * C, 10, 2.0f), weight = randn(C, 11), bias = randn(C, 12);
  for (int i = 0; i < N; i++) inp[(size_t)i * C] += 50.0f;  // rows far from zero mean
  Vec out(inp.size()), mean(N), rstd(N);
  cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), weight.data(), bias.data(), N, C);
  DVec x = to_double(inp), wd = to_double(weight), bd = to_double(bias), mref(N), rref(N);
  expect_close(out, ref_layernorm(x, wd, bd, N, C, &mref, &rref), kFwdTol, "out");
  expect_close(mean, mref, kFwdTol, "mean");
  expect_close(rstd, rref, kFwdTol, "rstd");

  Vec w = randn(out.size(), 13);
  Vec g0_inp = randn(inp.size(), 14), g0_w = randn(C, 15), g0_b = randn(C, 16);
  Vec dinp = g0_inp, dweight = g0_w, dbias = g0_b;
  cpu::layernorm_backward(dinp.data(), dweight.data(), dbias.data(), w.data(), inp.data(), weight.data(),
                          mean.data(), rstd.data(), N, C);
  auto loss = [&] { return dot(ref_layernorm(x, wd, bd, N, C), w); };
  expect_grad(dinp, g0_inp, x, loss, "dinp");
  expect_grad(dweight, g0_w, wd, loss, "dweight");
  expect_grad(dbias, g0_b, bd, loss, "dbias");
}

TEST(Matmul, ForwardBackward) {
  const int N = 9, IC = 21, OC = 70;  // OC spans two 64-column chunks of the bias gradient
  for (bool with_bias : {true, false}) {
    SCOPED_TRACE(with_bias ? "bias" : "no bias");
    Vec inp = randn((size_t)N * IC, 20), weight = randn((size_t)OC * IC, 21), bias = randn(OC, 22);
    Vec out((size_t)N * OC, 123.0f);  // overwritten, whatever it held
    cpu::matmul_forward(out.data(), inp.data(), weight.data(), with_bias ? bias.data() : nullptr, N, IC, OC);
    DVec x = to_double(inp), wd = to_double(weight), bd = to_double(bias);
    expect_close(out, ref_matmul(x, wd, with_bias ? &bd : nullptr, N, IC, OC), kFwdTol, "out");

    Vec w = randn(out.size(), 23);
    auto loss = [&] { return dot(ref_matmul(x, wd, with_bias ? &bd : nullptr, N, IC, OC), w); };
    for (bool accumulate_dinp : {true, false})
    for (bool accumulate_dweight : {true, false}) {
      SCOPED_TRACE(accumulate_dinp ? "dinp accumulated" : "dinp overwritten");
      SCOPED_TRACE(accumulate_dweight ? "dweight accumulated" : "dweight overwritten");
      // overwritten gradients start as NaN: a kernel that read them would show it
      Vec g0_inp = randn(inp.size(), 24), g0_w = randn(weight.size(), 25), g0_b = randn(OC, 26);
      Vec dinp = g0_inp, dweight = g0_w, dbias = g0_b;
      if (!accumulate_dinp) std::fill(dinp.begin(), dinp.end(), NAN), std::fill(g0_inp.begin(), g0_inp.end(), 0.0f);
      if (!accumulate_dweight) {
        std::fill(dweight.begin(), dweight.end(), NAN), std::fill(dbias.begin(), dbias.end(), NAN);
        std::fill(g0_w.begin(), g0_w.end(), 0.0f), std::fill(g0_b.begin(), g0_b.end(), 0.0f);
      }
      cpu::matmul_backward(dinp.data(), dweight.data(), with_bias ? dbias.data() : nullptr, w.data(), inp.data(),
                           weight.data(), N, IC, OC, accumulate_dinp, accumulate_dweight);
      expect_grad(dinp, g0_inp, x, loss, "dinp");
      expect_grad(dweight, g0_w, wd, loss, "dweight");
      if (with_bias) expect_grad(dbias, g0_b, bd, loss, "dbias");
    }
  }
}

// The GPT-2 MLP's fused first layer: pre is the linear layer, out its tanh GELU, both against the
// double references, with and without bias.
TEST(Matmul, GeluFusedMatchesReferences) {
  const int N = 7, IC = 19, OC = 40;
  Vec inp = randn((size_t)N * IC, 30), weight = randn((size_t)OC * IC, 31, 0.3f), bias = randn(OC, 32);
  DVec x = to_double(inp), wd = to_double(weight), bd = to_double(bias);
  for (bool with_bias : {true, false}) {
    SCOPED_TRACE(with_bias ? "bias" : "no bias");
    Vec out((size_t)N * OC, 5.0f), pre((size_t)N * OC, 6.0f);
    cpu::matmul_gelu_forward(out.data(), pre.data(), inp.data(), weight.data(), with_bias ? bias.data() : nullptr, N,
                             IC, OC);
    DVec want_pre = ref_matmul(x, wd, with_bias ? &bd : nullptr, N, IC, OC), want_out(want_pre.size());
    for (size_t i = 0; i < want_pre.size(); i++) want_out[i] = ref_gelu(want_pre[i]);
    expect_close(pre, want_pre, kFwdTol, "pre");
    expect_close(out, want_out, kFwdTol, "out");
  }
}

TEST(Matmul, NullDinpLeavesOnlyWeightGradients) {
  const int N = 4, IC = 8, OC = 5;
  Vec inp = randn((size_t)N * IC, 27), weight = randn((size_t)OC * IC, 28), dout = randn((size_t)N * OC, 29);
  Vec dweight(weight.size(), 0.0f);
  cpu::matmul_backward(nullptr, dweight.data(), nullptr, dout.data(), inp.data(), weight.data(), N, IC, OC, true,
                       true);
  DVec want(weight.size(), 0.0);
  for (int o = 0; o < OC; o++)
    for (int k = 0; k < IC; k++)
      for (int i = 0; i < N; i++) want[(size_t)o * IC + k] += (double)dout[(size_t)i * OC + o] * inp[(size_t)i * IC + k];
  expect_close(dweight, want, kFwdTol, "dweight");
}

struct AttentionShape {
  int B, T, C, NH, window, block;
};
void PrintTo(const AttentionShape& s, std::ostream* os) {
  *os << "B=" << s.B << " T=" << s.T << " C=" << s.C << " NH=" << s.NH << " window=" << s.window
      << " block=" << s.block;
}

class Attention : public ::testing::TestWithParam<AttentionShape> {};

TEST_P(Attention, ForwardBackward) {
  auto [B, T, C, NH, window, block] = GetParam();
  Vec qkv = randn((size_t)B * T * 3 * C, 30 + T + window);
  Vec out((size_t)B * T * C), lse((size_t)B * NH * T);
  cpu::attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH, window, block);
  DVec x = to_double(qkv), lse_ref(lse.size());
  expect_close(out, ref_attention(x, B, T, C, NH, window, block, &lse_ref), kFwdTolTranscendental, "out");
  expect_close(lse, lse_ref, kFwdTolTranscendental, "lse");

  Vec w = randn(out.size(), 31);
  Vec g0 = randn(qkv.size(), 32);
  Vec dqkv = g0;
  cpu::attention_backward(dqkv.data(), w.data(), qkv.data(), out.data(), lse.data(), B, T, C, NH, window, block);
  auto loss = [&] { return dot(ref_attention(x, B, T, C, NH, window, block), w); };
  expect_grad(dqkv, g0, x, loss, "dqkv", 200);
}

// The kernel's tiles are 128 queries x 128 keys: T = 37 fits one tile, T = 300 ends in a partial
// third. The windows fall inside a tile (5), at the tile size (128), at 1 (each query sees only
// itself) and at 131 with T = 258: the last query tile holds 2 queries, and its first key tile
// starts at the one key the last query no longer sees, the edge of the kernel's no-mask shortcut.
// Block sliding windows: chunks of 48 across the tiles (the last queries of a tile see none of its
// first key tile's keys), and window == block (each query sees its own chunk only).
INSTANTIATE_TEST_SUITE_P(Shapes, Attention,
                         ::testing::Values(AttentionShape{2, 37, 32, 4, 0, 0},    // hs 8
                                           AttentionShape{1, 300, 32, 2, 0, 0},   // hs 16
                                           AttentionShape{1, 300, 16, 2, 5, 0},
                                           AttentionShape{1, 300, 16, 2, 128, 0},
                                           AttentionShape{1, 258, 16, 2, 131, 0},
                                           AttentionShape{2, 20, 16, 1, 1, 0},
                                           AttentionShape{1, 140, 128, 2, 0, 0},  // hs 64, GPT-2's
                                           AttentionShape{1, 300, 16, 2, 96, 48},
                                           AttentionShape{2, 37, 16, 2, 8, 8}));

// Decode against prefill: attention_forward over T tokens, then the same qkv rows one position at
// a time through attention_decode's ring cache, row by row within 1e-5 (1 + |prefill|). Full
// attention (cap T, and a roomier cap), and sliding windows, plain and block, whose ring is exactly
// the window (slots reused from position `window` on) or wider. The caches start NaN: a read of a slot no key was
// written to would show. After the last token, slot s holds the last key j < T with j % cap == s.
TEST(AttentionDecode, MatchesPrefillRowByRow) {
  const int B = 2, T = 23, C = 32, NH = 4;
  Vec qkv = randn((size_t)B * T * 3 * C, 36);
  struct Ring {
    int window, cap, block;
  };
  for (auto [window, cap, block] : {Ring{0, T, 0}, Ring{0, T + 3, 0}, Ring{5, 5, 0}, Ring{5, 8, 0}, Ring{1, 1, 0},
                                    Ring{6, 6, 3}, Ring{6, 7, 2}, Ring{4, 4, 4}}) {
    SCOPED_TRACE("window " + std::to_string(window) + ", cap " + std::to_string(cap) + ", block " +
                 std::to_string(block));
    Vec prefill((size_t)B * T * C), lse((size_t)B * NH * T);
    cpu::attention_forward(prefill.data(), lse.data(), qkv.data(), B, T, C, NH, window, block);
    Vec k_cache((size_t)B * cap * C, NAN), v_cache((size_t)B * cap * C, NAN);
    for (int pos = 0; pos < T; pos++) {
      SCOPED_TRACE("position " + std::to_string(pos));
      Vec row((size_t)B * 3 * C), out((size_t)B * C, NAN), want((size_t)B * C);
      for (int b = 0; b < B; b++) {
        std::copy_n(&qkv[((size_t)b * T + pos) * 3 * C], 3 * C, &row[(size_t)b * 3 * C]);
        std::copy_n(&prefill[((size_t)b * T + pos) * C], C, &want[(size_t)b * C]);
      }
      cpu::attention_decode(out.data(), k_cache.data(), v_cache.data(), row.data(), B, C, NH, pos, cap, window, block);
      expect_close(out, want, kFwdTol, "out");
      if (HasFatalFailure()) return;
    }
    for (int b = 0; b < B; b++)
      for (int s = 0; s < cap && s < T; s++) {
        const int j = (T - 1 - s) / cap * cap + s;  // the last position with j % cap == s
        const float* key = &qkv[((size_t)b * T + j) * 3 * C];
        for (int c = 0; c < C; c++) {
          ASSERT_EQ(k_cache[((size_t)b * cap + s) * C + c], key[C + c]) << "k of b " << b << " slot " << s;
          ASSERT_EQ(v_cache[((size_t)b * cap + s) * C + c], key[2 * C + c]) << "v of b " << b << " slot " << s;
        }
      }
  }
}

// The keys a position sees must fit in the ring: pos+1 of them for full attention, window for a
// sliding window (fewer before the window has filled), window for a block sliding window (fewer
// before the chunk's end); a bad head split, and a window not a multiple of its block, are refused too.
TEST(AttentionDecode, RefusesACacheTooSmall) {
  const int B = 1, C = 8, NH = 2;
  Vec out(C), k((size_t)4 * C), v((size_t)4 * C), row(3 * C);
  auto decode = [&](int nh, int pos, int cap, int window, int block = 0) {
    cpu::attention_decode(out.data(), k.data(), v.data(), row.data(), B, C, nh, pos, cap, window, block);
  };
  EXPECT_NO_THROW(decode(NH, 3, 4, 0));
  EXPECT_THROW(decode(NH, 4, 4, 0), std::invalid_argument);
  EXPECT_NO_THROW(decode(NH, 9, 4, 4));
  EXPECT_THROW(decode(NH, 9, 3, 4), std::invalid_argument);
  EXPECT_NO_THROW(decode(NH, 2, 3, 4));  // 3 keys so far
  EXPECT_THROW(decode(3, 0, 4, 0), std::invalid_argument);
  EXPECT_THROW(decode(NH, -1, 4, 0), std::invalid_argument);
  EXPECT_NO_THROW(decode(NH, 9, 4, 4, 2));  // keys 6..9: chunks 3 and 4
  EXPECT_NO_THROW(decode(NH, 8, 3, 4, 2));  // keys 6..8
  EXPECT_THROW(decode(NH, 9, 3, 4, 2), std::invalid_argument);
  EXPECT_THROW(decode(NH, 9, 4, 4, 3), std::invalid_argument);
  EXPECT_THROW(decode(NH, 9, 4, 4, -1), std::invalid_argument);
}

TEST(Gelu, ForwardBackward) {
  const int N = 1000;
  Vec inp(N);
  for (int i = 0; i < N; i++) inp[i] = -8.0f + 16.0f * i / (N - 1);  // both saturated tails and zero
  Vec out(N);
  cpu::gelu_forward(out.data(), inp.data(), N);
  DVec x = to_double(inp), want(N);
  for (int i = 0; i < N; i++) want[i] = ref_gelu(x[i]);
  expect_close(out, want, kFwdTolTranscendental, "out");

  // dinp is written, never read: it starts as NaN
  Vec w = randn(N, 40), g0(N, 0.0f), dinp(N, NAN);
  cpu::gelu_backward(dinp.data(), inp.data(), w.data(), N);
  Vec in_place = w;  // dinp == dout, as the trainer calls it
  cpu::gelu_backward(in_place.data(), inp.data(), in_place.data(), N);
  expect_close(in_place, dinp, 0.0, "dinp in place");
  auto loss = [&] {
    double s = 0.0;
    for (int i = 0; i < N; i++) s += w[i] * ref_gelu(x[i]);
    return s;
  };
  expect_grad(dinp, g0, x, loss, "dinp");
}

struct CrossEntropyShape {
  int N, V, Vp;
  float spread;  // logits ~ N(0, spread) plus a ramp, so later chunks raise the running max
};
void PrintTo(const CrossEntropyShape& s, std::ostream* os) {
  *os << "N=" << s.N << " V=" << s.V << " Vp=" << s.Vp << " spread=" << s.spread;
}

class CrossEntropy : public ::testing::TestWithParam<CrossEntropyShape> {};

TEST_P(CrossEntropy, LossesAndGradient) {
  auto [N, V, Vp, spread] = GetParam();
  const int ignore = -1;
  const float dloss = 0.37f;
  Vec logits = randn((size_t)N * Vp, 60, spread);
  std::vector<int> targets(N);
  for (int i = 0; i < N; i++) {
    for (int c = 0; c < V; c++) logits[(size_t)i * Vp + c] += 4.0f * c / V;
    for (int c = V; c < Vp; c++) logits[(size_t)i * Vp + c] = 1e4f;  // padding would dominate if it took part
    targets[i] = i % 3 == 1 ? ignore : (i * 7919) % V;
  }
  targets[0] = V - 1;  // the last real column

  DVec x = to_double(logits);
  DVec want = ref_crossentropy(x, targets, N, V, Vp, ignore);
  Vec losses(N, 99.0f), untouched = logits;
  cpu::crossentropy_forward_backward(untouched.data(), losses.data(), targets.data(), N, V, Vp, 0.0f, ignore);
  expect_close(losses, want, kFwdTolTranscendental, "losses");
  EXPECT_EQ(untouched, logits) << "dloss == 0 must leave the logits alone";

  Vec dlogits = logits;
  std::fill(losses.begin(), losses.end(), 99.0f);
  cpu::crossentropy_forward_backward(dlogits.data(), losses.data(), targets.data(), N, V, Vp, dloss, ignore);
  expect_close(losses, want, kFwdTolTranscendental, "losses with backward");
  for (int i = 0; i < N; i++)
    for (int c = V; c < Vp; c++) ASSERT_EQ(dlogits[(size_t)i * Vp + c], 0.0f) << "padded column " << c;
  // Overwritten, not accumulated: compare with g0 = 0. Padded columns are excluded from the finite
  // differences (their reference gradient is 0 and checked above); ignored rows are not.
  auto loss = [&] {
    DVec l = ref_crossentropy(x, targets, N, V, Vp, ignore);
    return dloss * std::accumulate(l.begin(), l.end(), 0.0);
  };
  Vec zero(dlogits.size(), 0.0f);
  expect_grad(dlogits, zero, x, loss, "dlogits", 400);
  for (int i = 0; i < N; i++) {
    if (targets[i] != ignore) continue;
    for (int c = 0; c < Vp; c++) ASSERT_EQ(dlogits[(size_t)i * Vp + c], 0.0f) << "ignored row " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CrossEntropy,
                         ::testing::Values(CrossEntropyShape{6, 37, 40, 1.0f},
                                           CrossEntropyShape{4, 1500, 1536, 3.0f}));  // 3 online-softmax chunks

// The vocabulary-parallel phases on TP shards of the padded vocabulary, with the collectives the
// model makes between them done here (the all-gather of the maxima, the sum over the shards),
// against a naive double softmax: losses on every shard, and the shards' dlogits side by side.
// V = 30 of Vp = 48: at TP = 4 the shards are [0,12), [12,24), [24,36) (6 real columns) and
// [36,48) (padding only); targets in several shards, and ignored rows.
TEST(CrossEntropyShards, MatchNaiveSoftmax) {
  const int N = 7, V = 30, Vp = 48, ignore = -1;
  const float dloss = 0.37f;
  Vec logits = randn((size_t)N * Vp, 61, 2.0f);
  std::vector<int> targets = {29, 3, ignore, 17, 0, 25, ignore};
  for (int i = 0; i < N; i++)
    for (int c = V; c < Vp; c++) logits[(size_t)i * Vp + c] = 1e4f;  // padding would dominate if it took part
  // the reference: losses and dloss * (softmax - onehot), 0 in the padding and on ignored rows
  DVec want_loss(N, 0.0), want_grad((size_t)N * Vp, 0.0);
  for (int i = 0; i < N; i++) {
    if (targets[i] == ignore) continue;
    const float* row = &logits[(size_t)i * Vp];
    double mx = -INFINITY, sum = 0.0;
    for (int c = 0; c < V; c++) mx = std::max(mx, double(row[c]));
    for (int c = 0; c < V; c++) sum += std::exp(row[c] - mx);
    want_loss[i] = mx + std::log(sum) - row[targets[i]];
    for (int c = 0; c < V; c++)
      want_grad[(size_t)i * Vp + c] = dloss * (std::exp(row[c] - mx) / sum - (c == targets[i] ? 1.0 : 0.0));
  }
  for (int TP : {1, 2, 3, 4}) {
    SCOPED_TRACE("TP=" + std::to_string(TP));
    const int Vl = Vp / TP;
    std::vector<Vec> shard(TP, Vec((size_t)N * Vl));
    Vec mxs((size_t)TP * N), sums((size_t)2 * N, 0.0f);
    for (int r = 0; r < TP; r++) {
      for (int i = 0; i < N; i++)
        std::copy_n(&logits[(size_t)i * Vp + (size_t)r * Vl], Vl, &shard[r][(size_t)i * Vl]);
      cpu::crossentropy_shard_max(&mxs[(size_t)r * N], shard[r].data(), N, V, r * Vl, Vl);
      for (int i = 0; i < N && r * Vl >= V; i++) {
        ASSERT_EQ(mxs[(size_t)r * N + i], -INFINITY) << "a shard of padding only";
      }
    }
    for (float dl : {0.0f, dloss}) {
      SCOPED_TRACE(dl == 0.0f ? "forward only" : "forward and backward");
      std::fill(sums.begin(), sums.end(), 0.0f);
      std::vector<Vec> mx(TP, Vec(N)), part(TP, Vec((size_t)2 * N, 99.0f));
      for (int r = 0; r < TP; r++) {
        cpu::crossentropy_shard_sums(part[r].data(), mx[r].data(), mxs.data(), shard[r].data(), targets.data(), N, TP,
                                     V, r * Vl, Vl, ignore);
        for (int i = 0; i < N; i++) {  // the target logit comes from its owner only; ignored rows give 0, 0
          const int t = targets[i] - r * Vl;
          const bool owner = targets[i] != ignore && t >= 0 && t < Vl;
          const float want = owner ? shard[r][(size_t)i * Vl + t] : 0.0f;
          EXPECT_EQ(part[r][(size_t)N + i], want) << "row " << i << " shard " << r;
          EXPECT_TRUE(targets[i] != ignore || part[r][i] == 0.0f) << "ignored row " << i;
        }
        for (size_t k = 0; k < sums.size(); k++) sums[k] += part[r][k];
      }
      Vec got((size_t)N * Vp);
      for (int r = 0; r < TP; r++) {
        Vec out = shard[r], losses(N, 99.0f);
        cpu::crossentropy_shard_finish(out.data(), losses.data(), mx[r].data(), sums.data(), targets.data(), N, V,
                                       r * Vl, Vl, dl, ignore);
        expect_close(losses, want_loss, kFwdTolTranscendental, "losses");
        EXPECT_TRUE(dl != 0.0f || out == shard[r]) << "dloss == 0 must leave the logits alone";
        for (int i = 0; i < N; i++) std::copy_n(&out[(size_t)i * Vl], Vl, &got[(size_t)i * Vp + (size_t)r * Vl]);
      }
      if (dl == 0.0f) continue;
      expect_close(got, want_grad, kFwdTolTranscendental, "dlogits");
      for (int i = 0; i < N; i++)
        for (int c = 0; c < Vp; c++) {
          const bool zero = c >= V || targets[i] == ignore;  // padding, ignored rows
          ASSERT_TRUE(!zero || got[(size_t)i * Vp + c] == 0.0f) << "row " << i << " column " << c;
        }
    }
  }
}

TEST(AdamW, MatchesScalarLoop) {
  const size_t n = 1001;
  const float lr = 3e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gscale = 0.5f;
  Vec p = randn(n, 70), m(n, 0.0f), v(n, 0.0f);
  DVec pd = to_double(p), md(n, 0.0), vd(n, 0.0);
  for (int t = 1; t <= 5; t++) {
    Vec g = randn(n, 70 + t);
    cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, gscale, t);
    for (size_t i = 0; i < n; i++) {
      double gi = (double)g[i] * gscale;
      md[i] = b1 * md[i] + (1 - b1) * gi;
      vd[i] = b2 * vd[i] + (1 - b2) * gi * gi;
      double mhat = md[i] / (1 - std::pow((double)b1, t)), vhat = vd[i] / (1 - std::pow((double)b2, t));
      pd[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * pd[i]);
    }
  }
  expect_close(p, pd, 1e-6, "params");
  expect_close(m, md, 1e-6, "m");
  expect_close(v, vd, 1e-6, "v");
}

TEST(GlobalNorm, SquaredSumInDouble) {
  const size_t n = 100003;
  Vec g = randn(n, 80);
  g[5] = 1e3f;  // one large entry next to many small ones
  double want = 0.0;
  for (float x : g) want += (double)x * x;
  const kernels::IndexRange all{0, n};
  EXPECT_NEAR(cpu::global_norm_squared(g.data(), &all, 1), want, 1e-6 * want);
}

// ---- data movement between layouts (kernels/cpu/layout.cpp) ----------------------------------

// Token rows of stride ld holding NH heads of hs floats from column `first` (qkv's k block, say)
// to (B,NH,T,hs) and back: exact copies, and the row columns outside the heads left alone.
TEST(Layout, SplitAndMergeHeadsMoveEveryElementToItsPlace) {
  const int B = 2, T = 5, NH = 3, hs = 4, first = 7, ld = first + NH * hs + 3;
  Vec rows = randn((size_t)B * T * ld, 40), heads((size_t)B * NH * T * hs, NAN);
  cpu::split_heads(heads.data(), rows.data() + first, B, T, NH, hs, ld);
  auto head_at = [&](int b, int h, int t, int d) { return ((size_t)(b * NH + h) * T + t) * hs + d; };
  auto row_at = [&](int b, int h, int t, int d) { return (size_t)(b * T + t) * ld + first + h * hs + d; };
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++)
      for (int t = 0; t < T; t++)
        for (int d = 0; d < hs; d++) ASSERT_EQ(heads[head_at(b, h, t, d)], rows[row_at(b, h, t, d)]);

  for (int accumulate : {0, 1}) {
    SCOPED_TRACE(accumulate ? "accumulated" : "written");
    const Vec g0 = randn(rows.size(), 41);
    Vec out = g0;
    cpu::merge_heads(out.data() + first, heads.data(), B, T, NH, hs, ld, accumulate);
    Vec want = g0;
    for (int b = 0; b < B; b++)
      for (int h = 0; h < NH; h++)
        for (int t = 0; t < T; t++)
          for (int d = 0; d < hs; d++)
            want[row_at(b, h, t, d)] = (accumulate ? g0[row_at(b, h, t, d)] : 0.0f) + heads[head_at(b, h, t, d)];
    expect_close(out, to_double(want), 0.0, "rows");
  }
}

// out = a out + b inp over strided rows, against the scalar formula in double: the contiguous
// path, the strided one, a broadcast row (ldi 0), a == 0 never reading out (it starts NaN), and
// out == inp.
TEST(Layout, AxpbyRowsMatchesScalarFormula) {
  const size_t N = 6;
  const int C = 37;
  struct Case {
    const char* what;
    float a, b;
    size_t ldo, ldi;
  };
  const size_t c0 = C, c5 = C + 5, c9 = C + 9;
  for (const Case& c : {Case{"contiguous", 0.75f, -1.5f, c0, c0}, Case{"contiguous, a 0", 0.0f, 2.0f, c0, c0},
                        Case{"strided", 0.5f, 0.25f, c5, c9}, Case{"strided, a 0", 0.0f, -0.5f, c5, c9},
                        Case{"broadcast row", 1.0f, 1.0f, c5, 0}}) {
    SCOPED_TRACE(c.what);
    Vec out = randn(N * c.ldo, 42), inp = randn(c.ldi ? N * c.ldi : (size_t)C, 43);
    Vec start = out;
    if (c.a == 0.0f)  // only the C columns of each row are out's; a == 0 must not read them
      for (size_t r = 0; r < N; r++) std::fill(out.begin() + r * c.ldo, out.begin() + r * c.ldo + C, NAN);
    cpu::axpby_rows(out.data(), inp.data(), c.a, c.b, N, C, c.ldo, c.ldi);
    DVec want(start.begin(), start.end());
    for (size_t r = 0; r < N; r++)
      for (int k = 0; k < C; k++)
        want[r * c.ldo + k] =
            (c.a == 0.0f ? 0.0 : (double)c.a * start[r * c.ldo + k]) + (double)c.b * inp[r * c.ldi + k];
    expect_close(out, want, kFwdTol, "out");
  }
  Vec x = randn(N * C, 44), want_x = x;
  cpu::axpby_rows(x.data(), x.data(), 0.5f, 2.0f, N, C, C, C);
  for (float& v : want_x) v = 0.5f * v + 2.0f * v;
  expect_close(x, to_double(want_x), kFwdTol, "in place");
}

}  // namespace

// ---- the CUDA GEMM's epilogue routes (kernels/gemm_route.h): host rules ----------------------

TEST(GemmRoute, ABiasBelowSixteenBytesIsCopiedForTheFusedEpilogue) {
  using kernels::GemmRoute;
  for (uint32_t align : {4u, 8u})
    EXPECT_EQ(kernels::gemm_routes(true, false, align), (std::vector<GemmRoute>{{true, true}, {false, false}}))
        << align;
  for (uint32_t align : {16u, 256u})
    EXPECT_EQ(kernels::gemm_routes(true, true, align), (std::vector<GemmRoute>{{true, false}, {false, false}}))
        << align;
  // no bias: its alignment does not matter; nothing to fuse: only the plain GEMM
  EXPECT_EQ(kernels::gemm_routes(false, true, 4), (std::vector<GemmRoute>{{true, false}, {false, false}}));
  EXPECT_EQ(kernels::gemm_routes(false, false, 4), (std::vector<GemmRoute>{{false, false}}));
}

TEST(GemmRoute, AHeuristicRefusingTheEpilogueFallsBackToThePlainGemm) {
  using kernels::GemmRoute;
  std::vector<GemmRoute> asked;
  auto refuse_fused = [&](const GemmRoute& r) {
    asked.push_back(r);
    return !r.fused;
  };
  EXPECT_EQ(kernels::first_supported_route(true, true, 4, refuse_fused), (GemmRoute{false, false}));
  EXPECT_EQ(asked, (std::vector<GemmRoute>{{true, true}, {false, false}}));  // best first

  asked.clear();
  auto accept_all = [&](const GemmRoute& r) {
    asked.push_back(r);
    return true;
  };
  EXPECT_EQ(kernels::first_supported_route(true, false, 16, accept_all), (GemmRoute{true, false}));
  EXPECT_EQ(asked.size(), 1u);  // the fused route taken, the fallback never planned

  EXPECT_FALSE(kernels::first_supported_route(true, true, 16, [](const GemmRoute&) { return false; }).has_value());
}
