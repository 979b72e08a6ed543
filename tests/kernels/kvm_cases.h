#pragma once
// KVM settings and inputs shared by the backend table (test_backend_ops.cpp) and the CUDA-only KVM
// tests (test_cuda_kvm.cpp): budgets (fixed with appends, power_law, saturating, a slot cap), sink
// 0 and 1, vlens on and off, merge gates on and off, head temperatures on and off, W 2 and 3, D
// below, at and above a warp, T a multiple of C, not one, and below W*C. Every append and routing
// decision of these inputs is at least 3e-4 in score from a tie (measured on the CPU in double;
// scores are ~D), while two summation orders move a score by ~1e-6, so none can flip between
// backends.
#include <algorithm>
#include <string>
#include <vector>

#include "kernels/kvm.h"
#include "tests/test_util.h"

namespace test_util {

struct KvmCase {
  std::string name;
  kernels::KvmParams p;
  int B, H, T, D;
};

// Small chunks, so that a short sequence walks many updates.
inline std::vector<KvmCase> kvm_cases() {
  using kernels::KvmBudget;
  kernels::KvmParams base;
  base.C = 8, base.W = 2, base.S = 1, base.R = 8, base.min_len = 8, base.power_f = 4, base.sat_n = 24;
  base.max_slots = 8000;
  std::vector<KvmCase> cs;
  kernels::KvmParams p = base;  // min_len > C: the first updates append (by novelty), then merges only
  p.budget = KvmBudget::fixed, p.min_len = 13;
  cs.push_back({"fixed13_D24", p, 2, 3, 77, 24});
  p = base;
  p.budget = KvmBudget::power_law, p.R = 16;
  cs.push_back({"power_law_D32", p, 2, 3, 77, 32});
  p = base;  // no sink, count lens, ungated keys, gated chunk 0 at once; T a multiple of C
  p.budget = KvmBudget::saturating, p.S = 0, p.R = 4, p.vlens = false, p.gate_appends = false;
  p.gate_initial_state = true, p.merge_gate_keys = false;
  cs.push_back({"saturating_ablations", p, 1, 2, 96, 16});
  p = base;  // W 3, no temperatures, ungated values
  p.budget = KvmBudget::power_law, p.C = 16, p.W = 3, p.R = 32, p.min_len = 16, p.power_f = 3;
  p.head_temps = false, p.merge_gate_values = false;
  cs.push_back({"power_law_W3_D64", p, 2, 2, 203, 64});
  p = base;
  p.budget = KvmBudget::power_law, p.max_slots = 21;
  cs.push_back({"power_law_capped21", p, 1, 2, 120, 40});
  p = base;
  cs.push_back({"causal_only", p, 2, 2, 13, 16});  // T < W*C: causal attention only
  return cs;
}

// One KVM layer's inputs (g in [0.5, 1.5]: a merge gate 1+elu(x) > 0), and dout for a backward.
struct KvmInputs {
  std::vector<float> q, k, v, g, dout, w, b, tf, ts;
  KvmInputs(const KvmCase& c, uint32_t seed) {
    size_t N = (size_t)c.B * c.H * c.T * c.D, NG = (size_t)c.B * c.H * c.T;
    q = randn(N, seed), k = randn(N, seed + 1), v = randn(N, seed + 2);
    dout = randn(N, seed + 3);
    g = randn(NG, seed + 4, 0.25f);
    for (float& x : g) x = std::clamp(1.0f + x, 0.5f, 1.5f);
    w = randn(c.D, seed + 5, 0.2f), b = randn(c.D, seed + 6, 0.2f);
    for (float& x : w) x += 1.0f;
    tf = randn(c.H, seed + 7, 0.2f), ts = randn(c.H, seed + 8, 0.2f);
    for (float& x : tf) x += 1.0f;
    for (float& x : ts) x += 1.0f;
  }
};

}  // namespace test_util
