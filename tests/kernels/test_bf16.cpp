// The bf16 mixed-precision kernels against independent references:
//  - Philox4x32-10 (kernels/philox.h): Random123's published known-answer vectors;
//  - round to nearest even: the nearer of the two bf16 neighbours, chosen in double (ties: the
//    even mantissa), on random floats of every magnitude and on exact ties;
//  - stochastic rounding (kernels/cpu/bf16.cpp): always one of the two neighbours, unbiased (the
//    mean of 2^16 draws within 5 sigma of x), the same bits whatever the split into shards
//    (offset), other bits at another step or seed;
//  - matmul_forward_bf16 / matmul_backward_bf16: a double loop over the bf16-rounded operands,
//    the backward accumulating onto random gradients. Products of bf16 values are exact in fp32, so
//    only the fp32 summation order differs: tolerance 1e-5 * (1 + |ref|).
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/kernels.h"
#include "tests/test_util.h"

namespace {

using kernels::bf16;
using kernels::bf16_to_float;

TEST(Philox, Random123KnownAnswers) {
  struct Kat {
    kernels::Philox4x32 ctr;
    uint32_t k0, k1;
    uint32_t want[4];
  } kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, 0xffffffff, 0xffffffff,
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, 0xa4093822, 0x299f31d0,
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) {
    kernels::Philox4x32 got = kernels::philox4x32_10(k.ctr, k.k0, k.k1);
    for (int i = 0; i < 4; i++) EXPECT_EQ(got.v[i], k.want[i]) << "word " << i;
  }
}

// The nearer bf16 neighbour of a finite x, ties to the even mantissa, decided in double.
uint16_t reference_nearest(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;  // toward zero, and one bf16 ulp further out
  float flo;
  std::memcpy(&flo, &lo, 4);
  // hi may be the inf pattern: its magnitude is then 2^128, as IEEE rounding treats overflow
  const double dlo = std::fabs(double(flo));
  const double dhi = (hi & 0x7fffffffu) == 0x7f800000u ? std::ldexp(1.0, 128) : [&] {
    float f;
    std::memcpy(&f, &hi, 4);
    return std::fabs(double(f));
  }();
  const double ax = std::fabs(double(x));
  if (ax - dlo < dhi - ax) return uint16_t(lo >> 16);
  if (ax - dlo > dhi - ax) return uint16_t(hi >> 16);
  return uint16_t(((lo >> 16) & 1) ? hi >> 16 : lo >> 16);
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(Bf16, RoundNearestEvenMatchesReference) {
  std::mt19937 rng(7);
  std::vector<float> xs;
  for (int i = 0; i < 200000; i++) {
    uint32_t u = rng();
    if (((u >> 23) & 0xff) == 0xff) continue;  // inf / NaN: below
    xs.push_back(from_bits(u));
  }
  // exact ties: the dropped half is 0x8000, around an even and an odd kept mantissa
  for (uint32_t kept : {0x3f800000u, 0x3f810000u, 0xbf810000u, 0x00010000u, 0x7f7f0000u, 0x7f7e0000u})
    xs.push_back(from_bits(kept | 0x8000u));
  xs.push_back(3.0e38f);
  xs.push_back(-0.0f);
  for (float x : xs) ASSERT_EQ(kernels::bf16_round_nearest(x).bits, reference_nearest(x)) << std::hexfloat << x;
  EXPECT_EQ(kernels::bf16_round_nearest(INFINITY).bits, 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_to_float(kernels::bf16_round_nearest(NAN))));
}

TEST(Bf16, StochasticRoundingIsUnbiasedAndBetweenNeighbours) {
  const size_t n = 1 << 16;
  for (float x : {1.0f + 0.1875f * 0x1p-7f, -3.3e-3f, 12345.678f}) {
    std::vector<float> in(n, x);
    std::vector<bf16> out(n);
    kernels::cpu::bf16_round_stochastic(out.data(), in.data(), n, 42, 7, 1000);
    uint32_t u;
    std::memcpy(&u, &x, 4);
    const double lo = from_bits(u & 0xffff0000u), hi = from_bits((u & 0xffff0000u) + 0x10000u);
    const double p = (double(x) - lo) / (hi - lo);  // probability of rounding away from zero
    double sum = 0;
    size_t ups = 0;
    for (const bf16& b : out) {
      const double v = bf16_to_float(b);
      ASSERT_TRUE(v == lo || v == hi) << v;
      sum += v;
      ups += v == hi;
    }
    const double sigma = std::fabs(hi - lo) * std::sqrt(p * (1 - p) / double(n));
    EXPECT_NEAR(sum / double(n), double(x), 5 * sigma) << "x " << x;
    EXPECT_NEAR(double(ups) / double(n), p, 5 * std::sqrt(p * (1 - p) / double(n))) << "x " << x;
  }
}

TEST(Bf16, StochasticBitsDependOnGlobalIndexNotOnTheSplit) {
  const size_t n = 10007;
  std::vector<float> in = test_util::randn(n, 3);
  // special values inside the first whole group (the vector path), which the split below rounds
  // one at a time: NaN stays NaN (also one whose payload is all in the dropped bits), infinities
  // stay, the largest float may round up to inf
  const float special[] = {NAN,      kernels::bits_float(0x7f800001u), INFINITY,    -INFINITY,
                           FLT_MAX,  -FLT_MAX,                         FLT_TRUE_MIN, -0.0f};
  std::copy(std::begin(special), std::end(special), in.begin() + 20);
  std::vector<bf16> whole(n), parts(n), other_step(n), other_seed(n);
  kernels::cpu::bf16_round_stochastic(whole.data(), in.data(), n, 5, 11, 1ull << 40);
  // three shards at uneven boundaries, each told its global offset
  const size_t cut[] = {0, 13, 5000, n};
  for (int s = 0; s < 3; s++)
    kernels::cpu::bf16_round_stochastic(parts.data() + cut[s], in.data() + cut[s], cut[s + 1] - cut[s], 5, 11,
                                        (1ull << 40) + cut[s]);
  size_t differ_step = 0, differ_seed = 0;
  kernels::cpu::bf16_round_stochastic(other_step.data(), in.data(), n, 5, 12, 1ull << 40);
  kernels::cpu::bf16_round_stochastic(other_seed.data(), in.data(), n, 6, 11, 1ull << 40);
  for (size_t i = 0; i < n; i++) {
    ASSERT_EQ(whole[i].bits, parts[i].bits) << i;
    ASSERT_EQ(whole[i].bits, kernels::bf16_round_stochastic_bits(in[i], kernels::stochastic_round_bits(5, 11, (1ull << 40) + i)).bits);
    differ_step += whole[i].bits != other_step[i].bits;
    differ_seed += whole[i].bits != other_seed[i].bits;
  }
  // a random float rounds differently with other bits about a third of the time
  EXPECT_GT(differ_step, n / 10);
  EXPECT_GT(differ_seed, n / 10);
}

std::vector<double> rounded(const std::vector<float>& x) {
  std::vector<double> r(x.size());
  for (size_t i = 0; i < x.size(); i++) r[i] = bf16_to_float(kernels::bf16_round_nearest(x[i]));
  return r;
}

TEST(MatmulBf16, ForwardBackwardMatchDoubleLoopOnRoundedOperands) {
  const int N = 37, IC = 70, OC = 45;
  std::vector<float> inp = test_util::randn(size_t(N) * IC, 1), w = test_util::randn(size_t(OC) * IC, 2, 0.1f),
                     bias = test_util::randn(OC, 3), dout = test_util::randn(size_t(N) * OC, 4);
  std::vector<bf16> w16(w.size());
  for (size_t i = 0; i < w.size(); i++) w16[i] = kernels::bf16_round_nearest(w[i]);
  const std::vector<double> ri = rounded(inp), rw = rounded(w), rd = rounded(dout);
  for (bool with_bias : {true, false}) {
    std::vector<float> out(size_t(N) * OC);
    kernels::cpu::matmul_forward_bf16(out.data(), inp.data(), w16.data(), with_bias ? bias.data() : nullptr, N, IC, OC);
    std::vector<double> want(out.size());
    for (int n = 0; n < N; n++)
      for (int o = 0; o < OC; o++) {
        double s = with_bias ? bias[o] : 0.0;
        for (int i = 0; i < IC; i++) s += ri[size_t(n) * IC + i] * rw[size_t(o) * IC + i];
        want[size_t(n) * OC + o] = s;
      }
    test_util::expect_close(out, want, 1e-5, "out");
  }
  // backward onto random gradients: they must accumulate; or, without accumulate, dweight and
  // dbias overwritten (they start as NaN, which a read would spread)
  for (bool accumulate : {true, false}) {
    SCOPED_TRACE(accumulate ? "accumulate" : "overwrite");
    std::vector<float> dinp = test_util::randn(inp.size(), 5), dw = test_util::randn(w.size(), 6),
                       db = test_util::randn(OC, 7);
    std::vector<double> want_dinp(dinp.begin(), dinp.end()), want_dw(dw.size(), 0.0), want_db(db.size(), 0.0);
    if (accumulate) want_dw.assign(dw.begin(), dw.end()), want_db.assign(db.begin(), db.end());
    else std::fill(dw.begin(), dw.end(), NAN), std::fill(db.begin(), db.end(), NAN);
    if (!accumulate) std::fill(want_dinp.begin(), want_dinp.end(), 0.0), std::fill(dinp.begin(), dinp.end(), NAN);
    for (int n = 0; n < N; n++)
      for (int o = 0; o < OC; o++) {
        const double d = rd[size_t(n) * OC + o];
        want_db[o] += dout[size_t(n) * OC + o];  // the bias gradient sums the fp32 dout
        for (int i = 0; i < IC; i++) {
          want_dinp[size_t(n) * IC + i] += d * rw[size_t(o) * IC + i];
          want_dw[size_t(o) * IC + i] += d * ri[size_t(n) * IC + i];
        }
      }
    kernels::cpu::matmul_backward_bf16(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w16.data(), N, IC,
                                       OC, accumulate, accumulate);
    test_util::expect_close(dinp, want_dinp, 1e-5, "dinp");
    test_util::expect_close(dw, want_dw, 1e-5, "dweight");
    test_util::expect_close(db, want_db, 1e-5, "dbias");
  }
}

}  // namespace
