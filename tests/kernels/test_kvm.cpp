// KVM attention core (kernels/kvm.h) on random inputs, beyond the reference fixtures:
//  - decode (KvmCache, one token at a time) reproduces prefill at every position: |dec - pre| <=
//    1e-5 (1 + |pre|), for fixed, power_law and saturating budgets, T not a multiple of C, T < W*C;
//  - with C >= T a KVM layer is causal attention (attention_forward), 1e-5 (1 + |ref|);
//  - the backward against central differences of L = sum(out * dout) (float forward, difference
//    taken in double per output element, eps 1e-2, 2e-3 for ln_s), |an - fd| <= 3e-3 (1 + |fd|)
//    (measured <= 1e-3; fp32 forward noise / eps bounds it); an element whose
//    perturbation changes any routing decision or append is skipped (routing is a constant);
//  - reversible backward (undoing updates) == snapshot backward, 1e-5 (1 + |x|) (measured: 0, the
//    state sums are double);
//  - slot counts of the doc's table via kvm_budget over the schedule (exact).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/kvm.h"

namespace cpu = kernels::cpu;
using Vec = std::vector<float>;

namespace {

Vec randn(size_t n, std::mt19937& rng, float mean = 0.0f, float sd = 1.0f) {
  std::normal_distribution<float> dist(mean, sd);
  Vec v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// One KVM layer's inputs and parameters (g in [0.5, 1.5]: a merge gate 1+elu(x) > 0).
struct Inputs {
  int B, H, T, D;
  Vec q, k, v, g, dout, w, b, tf, ts;
  Inputs(int B_, int H_, int T_, int D_, uint32_t seed) : B(B_), H(H_), T(T_), D(D_) {
    std::mt19937 rng(seed);
    size_t N = (size_t)B * H * T * D;
    q = randn(N, rng), k = randn(N, rng), v = randn(N, rng), dout = randn(N, rng);
    std::uniform_real_distribution<float> u(0.5f, 1.5f);
    g.resize((size_t)B * H * T);
    for (float& x : g) x = u(rng);
    w = randn(D, rng, 1.0f, 0.2f), b = randn(D, rng, 0.0f, 0.2f);
    tf = randn(H, rng, 1.0f, 0.2f), ts = randn(H, rng, 1.0f, 0.2f);
  }
  Vec forward(kernels::KvmTape& tape, const kernels::KvmParams& p) const {
    Vec out(q.size());
    cpu::kvm_forward(out.data(), tape, q.data(), k.data(), v.data(), g.data(), w.data(), b.data(), tf.data(),
                     ts.data(), B, H, T, D, p);
    return out;
  }
};

struct Grads {
  Vec dq, dk, dv, dg, dw, db, dtf, dts;
};

Grads backward(const Inputs& in, const kernels::KvmTape& tape, const kernels::KvmParams& p) {
  size_t N = in.q.size();
  Grads gr{Vec(N), Vec(N), Vec(N), Vec(in.g.size()), Vec(in.D), Vec(in.D), Vec(in.H), Vec(in.H)};
  cpu::kvm_backward(gr.dq.data(), gr.dk.data(), gr.dv.data(), gr.dg.data(), gr.dw.data(), gr.db.data(),
                    gr.dtf.data(), gr.dts.data(), in.dout.data(), tape, in.q.data(), in.k.data(), in.v.data(),
                    in.g.data(), in.w.data(), in.b.data(), in.tf.data(), in.ts.data(), in.B, in.H, in.T, in.D, p);
  return gr;
}

kernels::KvmParams small(kernels::KvmBudget budget) {
  kernels::KvmParams p;
  p.C = 8, p.W = 2, p.S = 1, p.R = 8, p.budget = budget;
  p.min_len = 8, p.power_f = 4, p.power_e = 0.5, p.sat_n = 24, p.max_slots = 8000;
  return p;
}

// max |a - b| / (1 + |b|)
double max_rel(const Vec& a, const Vec& b) {
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); i++) worst = std::max(worst, std::abs((double)a[i] - b[i]) / (1.0 + std::abs(b[i])));
  return worst;
}

void decode_matches_prefill(const kernels::KvmParams& p, int T) {
  int H = 2, D = 16;
  Inputs in(1, H, T, D, 7);
  kernels::KvmTape tape;
  Vec pre = in.forward(tape, p);
  kernels::KvmCache cache(H, D, p);
  Vec q(H * D), k(H * D), v(H * D), g(H), out(H * D);
  double worst = 0.0;
  for (int t = 0; t < T; t++) {
    for (int h = 0; h < H; h++) {  // (H,T,D) -> (H,D) at position t
      std::copy_n(in.q.begin() + ((size_t)h * T + t) * D, D, q.begin() + h * D);
      std::copy_n(in.k.begin() + ((size_t)h * T + t) * D, D, k.begin() + h * D);
      std::copy_n(in.v.begin() + ((size_t)h * T + t) * D, D, v.begin() + h * D);
      g[h] = in.g[(size_t)h * T + t];
    }
    cpu::kvm_decode_step(out.data(), cache, q.data(), k.data(), v.data(), g.data(), in.w.data(), in.b.data(),
                         in.tf.data(), in.ts.data(), p);
    for (int h = 0; h < H; h++)
      for (int d = 0; d < D; d++) {
        float want = pre[((size_t)h * T + t) * D + d];
        double e = std::abs((double)out[h * D + d] - want) / (1.0 + std::abs(want));
        worst = std::max(worst, e);
        ASSERT_LE(e, 1e-5) << "position " << t << " head " << h << " dim " << d;
      }
  }
  EXPECT_EQ(cache.position(), T);
  std::printf("  T=%d: decode vs prefill max rel err %.3g, cache %zu bytes\n", T, worst, cache.bytes());
}

TEST(Kvm, DecodeMatchesPrefill) {
  for (auto budget : {kernels::KvmBudget::fixed, kernels::KvmBudget::power_law, kernels::KvmBudget::saturating}) {
    SCOPED_TRACE(int(budget));
    decode_matches_prefill(small(budget), 77);  // 9 full chunks and a partial one of 5
    decode_matches_prefill(small(budget), 13);  // T < W*C: causal attention only
    decode_matches_prefill(small(budget), 96);  // T a multiple of C
  }
}

TEST(Kvm, OneChunkIsCausalAttention) {
  int H = 2, D = 16, T = 50;
  Inputs in(1, H, T, D, 3);
  kernels::KvmParams p = small(kernels::KvmBudget::fixed);
  p.C = 64, p.head_temps = false;  // C >= T: every query is in the causal part, tau = 1
  kernels::KvmTape tape;
  Vec out = in.forward(tape, p);
  int Cm = H * D;  // model width for attention_forward's (1,T,3C) qkv
  Vec qkv((size_t)T * 3 * Cm), ref((size_t)T * Cm), lse(H * T);
  for (int h = 0; h < H; h++)
    for (int t = 0; t < T; t++)
      for (int d = 0; d < D; d++) {
        size_t src = ((size_t)h * T + t) * D + d, row = (size_t)t * 3 * Cm + h * D + d;
        qkv[row] = in.q[src], qkv[row + Cm] = in.k[src], qkv[row + 2 * Cm] = in.v[src];
      }
  cpu::attention_forward(ref.data(), lse.data(), qkv.data(), 1, T, Cm, H, 0, 0);
  Vec ref_bhtd(out.size());
  for (int h = 0; h < H; h++)
    for (int t = 0; t < T; t++)
      for (int d = 0; d < D; d++) ref_bhtd[((size_t)h * T + t) * D + d] = ref[(size_t)t * Cm + h * D + d];
  EXPECT_LE(max_rel(out, ref_bhtd), 1e-5);
}

// Routing of every token, to detect a perturbation that flips a decision.
std::vector<int> routing(const kernels::KvmTape& tape, const Inputs& in) {
  std::vector<int> r;
  for (int b = 0; b < in.B; b++)
    for (int h = 0; h < in.H; h++)
      for (int t = 0; t < in.T; t++) r.push_back(tape.routing_kind(b, h, t) * 100000 + tape.routing_slot(b, h, t));
  return r;
}

void check_gradients(const kernels::KvmParams& p, uint32_t seed) {
  Inputs in(1, 2, 45, 8, seed);
  kernels::KvmTape tape;
  in.forward(tape, p);
  const std::vector<int> base = routing(tape, in);
  Grads gr = backward(in, tape, p);
  auto fd_check = [&](Vec& x, const Vec& an, const char* what, double eps = 1e-2) {
    int skipped = 0;
    double worst = 0.0;
    for (size_t i = 0; i < x.size(); i++) {
      float x0 = x[i];
      kernels::KvmTape tp, tm;
      x[i] = x0 + (float)eps;
      Vec op = in.forward(tp, p);
      x[i] = x0 - (float)eps;
      Vec om = in.forward(tm, p);
      double dx = (double)(x0 + (float)eps) - (double)(x0 - (float)eps);
      x[i] = x0;
      if (routing(tp, in) != base || routing(tm, in) != base) {
        skipped++;
        continue;
      }
      double fd = 0.0;
      for (size_t j = 0; j < op.size(); j++) fd += ((double)op[j] - om[j]) * in.dout[j];
      fd /= dx;
      double e = std::abs(an[i] - fd) / (1.0 + std::abs(fd));
      worst = std::max(worst, e);
      EXPECT_LE(e, 3e-3) << what << "[" << i << "]: analytic " << an[i] << ", central difference " << fd;
    }
    std::printf("  %-6s max rel err %.3g, %d of %zu skipped (routing flips)\n", what, worst, skipped, x.size());
    EXPECT_LE(skipped * 4, (int)x.size()) << what << ": too many perturbations flip the routing";
  };
  fd_check(in.q, gr.dq, "q");
  fd_check(in.k, gr.dk, "k");
  fd_check(in.v, gr.dv, "v");
  fd_check(in.g, gr.dg, "g");
  fd_check(in.w, gr.dw, "ln_w", 2e-3);  // moves every prepared key: a smaller step flips less routing
  fd_check(in.b, gr.db, "ln_b", 2e-3);
  if (p.head_temps) {
    fd_check(in.tf, gr.dtf, "tau_f");
    fd_check(in.ts, gr.dts, "tau_s");
  }
}

TEST(Kvm, GradientsMatchCentralDifferences) {
  kernels::KvmParams p = small(kernels::KvmBudget::power_law);  // appends and merges
  p.C = 5, p.R = 4, p.min_len = 5, p.power_f = 2;
  check_gradients(p, 11);
}

TEST(Kvm, GradientsMatchCentralDifferencesOtherFlags) {
  kernels::KvmParams p = small(kernels::KvmBudget::saturating);
  p.C = 5, p.R = 2, p.min_len = 5, p.sat_n = 16, p.S = 0;
  p.vlens = false, p.gate_appends = false, p.gate_initial_state = true, p.merge_gate_keys = false;
  check_gradients(p, 12);
}

TEST(Kvm, ReversibleBackwardMatchesSnapshots) {
  kernels::KvmParams p;
  p.C = 16, p.W = 2, p.S = 1, p.R = 16, p.budget = kernels::KvmBudget::power_law, p.min_len = 16, p.power_f = 4;
  Inputs in(2, 2, 1000, 32, 5);
  kernels::KvmTape rev, snap;
  snap.snapshots = true;
  Vec o1 = in.forward(rev, p), o2 = in.forward(snap, p);
  ASSERT_EQ(o1, o2);
  Grads a = backward(in, rev, p), b = backward(in, snap, p);
  double worst = 0.0;
  for (auto [x, y] : {std::pair{&a.dq, &b.dq}, {&a.dk, &b.dk}, {&a.dv, &b.dv}, {&a.dg, &b.dg}, {&a.dw, &b.dw},
                      {&a.db, &b.db}, {&a.dtf, &b.dtf}, {&a.dts, &b.dts}}) {
    worst = std::max(worst, max_rel(*x, *y));
  }
  std::printf("  reversible vs snapshots: max rel diff %.3g; tape %zu vs %zu bytes\n", worst, rev.bytes(),
              snap.bytes());
  EXPECT_LE(worst, 1e-5);
  EXPECT_LT(rev.bytes() * 4, snap.bytes());
}

// Slots of the final training state after T tokens (doc section 9 table, C = 256, W = 2).
int slots_after(const kernels::KvmParams& p, int T) {
  int M = std::min(T, p.C);
  for (int qe = p.W * p.C + p.C; qe < T; qe += p.C) {  // the update after each read-out but the last
    int avail = qe + p.C - p.W * p.C;
    M += std::clamp(kernels::kvm_budget(p, qe, avail, M) - M, 0, p.C);
  }
  return M;
}

TEST(Kvm, SlotCountsOfTheDocTable) {
  kernels::KvmParams sqrt16;
  sqrt16.budget = kernels::KvmBudget::power_law, sqrt16.power_f = 16, sqrt16.power_e = 0.5, sqrt16.min_len = 256;
  EXPECT_EQ(slots_after(sqrt16, 4096), 991);
  EXPECT_EQ(slots_after(sqrt16, 8192), 1425);
  EXPECT_EQ(slots_after(sqrt16, 32768), 2884);
  kernels::KvmParams sat;
  sat.budget = kernels::KvmBudget::saturating, sat.sat_n = 1024, sat.min_len = 1;
  EXPECT_EQ(slots_after(sat, 4096), 808);
  EXPECT_EQ(slots_after(sat, 8192), 906);
  EXPECT_EQ(slots_after(sat, 32768), 992);
  kernels::KvmParams fixed;  // min_len = C = 256: the initial chunk fills the budget
  EXPECT_EQ(slots_after(fixed, 32768), 256);
}

TEST(Kvm, SlotCountsOfTheKernelFollowTheBudget) {
  kernels::KvmParams p = small(kernels::KvmBudget::power_law);
  Inputs in(1, 1, 200, 16, 9);
  kernels::KvmTape tape;
  in.forward(tape, p);
  EXPECT_EQ(tape.final_slots(0, 0), slots_after(p, 200));
}

TEST(Kvm, RejectsBadSettings) {
  kernels::KvmParams p = small(kernels::KvmBudget::fixed);
  p.R = 17;
  Inputs in(1, 1, 20, 16, 1);
  kernels::KvmTape tape;
  EXPECT_THROW(in.forward(tape, p), std::runtime_error);
  EXPECT_THROW(kernels::KvmCache(1, 16, p), std::runtime_error);
}

}  // namespace
