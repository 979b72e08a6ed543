// The CUDA KVM twins (kernels/kvm.h, kernels::cuda::kvm_*) against the CPU ones (themselves
// checked against the paper's reference code in test_kvm_fixture.cpp and by central differences in
// test_kvm.cpp) on the same random inputs, over budgets (fixed with appends, power_law, saturating,
// a slot cap), sink 0 and 1, vlens on and off, merge gates on and off, head temperatures on and
// off, W 2 and 3, D below, at and above a warp, T a multiple of C, not one, and below W*C.
// Skipped, with a message, where no CUDA device is present.
// Tolerances, |cuda - cpu| <= tol * (1 + |cpu|):
//  - exact: the routing (kind and slot of every token), the slot counts after every update;
//  - 1e-5: the final state sums and s_len (both build them in double from the same fp32 terms);
//  - 1e-4: forward output and decode (fp32 GEMMs of up to a few hundred terms in another order,
//    expf against the CPU's exp); the CPU backward walking the downloaded CUDA tape back;
//  - 1e-3: every gradient (sums over every read-out and token in another order, through ln_s and
//    the value normalisation; a wrong term is O(1)).
// Every append and routing decision of these inputs is at least 3e-4 in score from a tie (measured
// on the CPU in double; scores are ~D), while the two summation orders move a score by ~1e-6, so
// none can flip.
#include <gtest/gtest.h>

#include "tests/cuda_test_util.h"
#include "tests/test_util.h"

#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/kernels.h"
#include "kernels/kvm.h"

namespace {

using Vec = std::vector<float>;
using kernels::KvmBudget;
using kernels::KvmParams;
using test_util::expect_close;

using test_util::DeviceVec;

struct Case {
  std::string name;
  KvmParams p;
  int B, H, T, D;
};

// Small chunks, so that a short sequence walks many updates.
std::vector<Case> cases() {
  KvmParams base;
  base.C = 8, base.W = 2, base.S = 1, base.R = 8, base.min_len = 8, base.power_f = 4, base.sat_n = 24;
  base.max_slots = 8000;
  std::vector<Case> cs;
  KvmParams p = base;  // min_len > C: the first updates append (by novelty), then merges only
  p.budget = KvmBudget::fixed, p.min_len = 13;
  cs.push_back({"fixed 13, D 24", p, 2, 3, 77, 24});
  p = base;
  p.budget = KvmBudget::power_law, p.R = 16;
  cs.push_back({"power_law, D 32", p, 2, 3, 77, 32});
  p = base;  // every ablation flag at once, T a multiple of C
  p.budget = KvmBudget::saturating, p.S = 0, p.R = 4, p.vlens = false, p.gate_appends = false;
  p.gate_initial_state = true, p.merge_gate_keys = false;
  cs.push_back({"saturating, no sink, count lens, ungated keys, gated chunk 0", p, 1, 2, 96, 16});
  p = base;
  p.budget = KvmBudget::power_law, p.C = 16, p.W = 3, p.R = 32, p.min_len = 16, p.power_f = 3;
  p.head_temps = false, p.merge_gate_values = false;
  cs.push_back({"power_law W 3, D 64, no temperatures, ungated values", p, 2, 2, 203, 64});
  p = base;
  p.budget = KvmBudget::power_law, p.max_slots = 21;
  cs.push_back({"power_law capped at 21 slots", p, 1, 2, 120, 40});
  p = base;
  cs.push_back({"T < W*C: causal attention only", p, 2, 2, 13, 16});
  return cs;
}

// One KVM layer's inputs (g in [0.5, 1.5]: a merge gate 1+elu(x) > 0) and random gradients to
// accumulate onto.
struct Inputs {
  Vec q, k, v, g, dout, w, b, tf, ts;
  Inputs(const Case& c, uint32_t seed) {
    size_t N = (size_t)c.B * c.H * c.T * c.D, NG = (size_t)c.B * c.H * c.T;
    q = test_util::randn(N, seed), k = test_util::randn(N, seed + 1), v = test_util::randn(N, seed + 2);
    dout = test_util::randn(N, seed + 3);
    g = test_util::randn(NG, seed + 4, 0.25f);
    for (float& x : g) x = std::clamp(1.0f + x, 0.5f, 1.5f);
    w = test_util::randn(c.D, seed + 5, 0.2f), b = test_util::randn(c.D, seed + 6, 0.2f);
    for (float& x : w) x += 1.0f;
    tf = test_util::randn(c.H, seed + 7, 0.2f), ts = test_util::randn(c.H, seed + 8, 0.2f);
    for (float& x : tf) x += 1.0f;
    for (float& x : ts) x += 1.0f;
  }
};

struct Grads {
  Vec dq, dk, dv, dg, dw, db, dtf, dts;
  explicit Grads(const Case& c, uint32_t seed) {
    size_t N = (size_t)c.B * c.H * c.T * c.D, NG = (size_t)c.B * c.H * c.T;
    dq = test_util::randn(N, seed), dk = test_util::randn(N, seed + 1), dv = test_util::randn(N, seed + 2);
    dg = test_util::randn(NG, seed + 3), dw = test_util::randn(c.D, seed + 4), db = test_util::randn(c.D, seed + 5);
    dtf = test_util::randn(c.H, seed + 6), dts = test_util::randn(c.H, seed + 7);
  }
};

// The inputs on the device.
struct DeviceInputs {
  DeviceVec q, k, v, g, dout, w, b, tf, ts;
  explicit DeviceInputs(const Inputs& in)
      : q(in.q), k(in.k), v(in.v), g(in.g), dout(in.dout), w(in.w), b(in.b), tf(in.tf), ts(in.ts) {}
};

Vec cpu_forward(kernels::KvmTape& tape, const Inputs& in, const Case& c) {
  Vec out(in.q.size());
  kernels::cpu::kvm_forward(out.data(), tape, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.w.data(),
                            in.b.data(), in.tf.data(), in.ts.data(), c.B, c.H, c.T, c.D, c.p);
  return out;
}

Vec cuda_forward(kernels::KvmTape& tape, DeviceInputs& in, const Case& c) {
  DeviceVec out{Vec((size_t)c.B * c.H * c.T * c.D, 7.0f)};
  kernels::cuda::kvm_forward(out.get(), tape, in.q.get(), in.k.get(), in.v.get(), in.g.get(), in.w.get(),
                             in.b.get(), in.tf.get(), in.ts.get(), c.B, c.H, c.T, c.D, c.p);
  return out.host();
}

void cpu_backward(Grads& gr, const kernels::KvmTape& tape, const Inputs& in, const Case& c) {
  kernels::cpu::kvm_backward(gr.dq.data(), gr.dk.data(), gr.dv.data(), gr.dg.data(), gr.dw.data(), gr.db.data(),
                             gr.dtf.data(), gr.dts.data(), in.dout.data(), tape, in.q.data(), in.k.data(),
                             in.v.data(), in.g.data(), in.w.data(), in.b.data(), in.tf.data(), in.ts.data(), c.B, c.H,
                             c.T, c.D, c.p);
}

Grads cuda_backward(const Grads& init, const kernels::KvmTape& tape, DeviceInputs& in, const Case& c) {
  DeviceVec dq(init.dq), dk(init.dk), dv(init.dv), dg(init.dg), dw(init.dw), db(init.db), dtf(init.dtf),
      dts(init.dts);
  kernels::cuda::kvm_backward(dq.get(), dk.get(), dv.get(), dg.get(), dw.get(), db.get(), dtf.get(), dts.get(),
                              in.dout.get(), tape, in.q.get(), in.k.get(), in.v.get(), in.g.get(), in.w.get(),
                              in.b.get(), in.tf.get(), in.ts.get(), c.B, c.H, c.T, c.D, c.p);
  Grads gr = init;
  gr.dq = dq.host(), gr.dk = dk.host(), gr.dv = dv.host(), gr.dg = dg.host();
  gr.dw = dw.host(), gr.db = db.host(), gr.dtf = dtf.host(), gr.dts = dts.host();
  return gr;
}

void expect_grads_close(const Grads& got, const Grads& want, double tol) {
  expect_close(got.dq, want.dq, tol, "dq");
  expect_close(got.dk, want.dk, tol, "dk");
  expect_close(got.dv, want.dv, tol, "dv");
  expect_close(got.dg, want.dg, tol, "dg");
  expect_close(got.dw, want.dw, tol, "d_ln_s_weight");
  expect_close(got.db, want.db, tol, "d_ln_s_bias");
  expect_close(got.dtf, want.dtf, tol, "d_tau_front");  // untouched without head temperatures
  expect_close(got.dts, want.dts, tol, "d_tau_state");
}

class CudaKvm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount found none";
  }
};

TEST_F(CudaKvm, ForwardAndRoutingMatchCpu) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    Inputs in(c, 100);
    DeviceInputs in_d(in);
    kernels::KvmTape tape, tape_d;
    Vec want = cpu_forward(tape, in, c);
    Vec got = cuda_forward(tape_d, in_d, c);
    expect_close(got, want, 1e-4, "out");
    EXPECT_EQ(tape_d.slots_after_update(), tape.slots_after_update());
    kernels::cuda::kvm_tape_to_host(tape_d);
    int wrong = 0;
    for (int bh = 0; bh < c.B * c.H; bh++) {
      int b = bh / c.H, h = bh % c.H;
      for (int t = 0; t < c.T; t++)
        if (tape_d.routing_kind(b, h, t) != tape.routing_kind(b, h, t) ||
            tape_d.routing_slot(b, h, t) != tape.routing_slot(b, h, t)) {
          if (wrong++ == 0)
            ADD_FAILURE() << "routing of (b " << b << ", h " << h << ", t " << t << "): cuda ("
                          << tape_d.routing_kind(b, h, t) << ", " << tape_d.routing_slot(b, h, t) << "), cpu ("
                          << tape.routing_kind(b, h, t) << ", " << tape.routing_slot(b, h, t) << ")";
        }
      int M = tape.final_slots(b, h);
      ASSERT_EQ(tape_d.final_slots(b, h), M);
      size_t MD = (size_t)M * c.D;
      expect_close(Vec(tape_d.final_s_k(b, h), tape_d.final_s_k(b, h) + MD),
                   Vec(tape.final_s_k(b, h), tape.final_s_k(b, h) + MD), 1e-5, "final s_k");
      expect_close(Vec(tape_d.final_s_v(b, h), tape_d.final_s_v(b, h) + MD),
                   Vec(tape.final_s_v(b, h), tape.final_s_v(b, h) + MD), 1e-5, "final s_v");
      expect_close(Vec(tape_d.final_s_len(b, h), tape_d.final_s_len(b, h) + M),
                   Vec(tape.final_s_len(b, h), tape.final_s_len(b, h) + M), 1e-5, "final s_len");
    }
    EXPECT_EQ(wrong, 0) << "tokens routed differently";
  }
}

TEST_F(CudaKvm, BackwardMatchesCpu) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    Inputs in(c, 200);
    DeviceInputs in_d(in);
    const Grads init(c, 300);  // gradients accumulate: start from random values
    kernels::KvmTape tape, tape_d;
    cpu_forward(tape, in, c);
    cuda_forward(tape_d, in_d, c);
    Grads want = init;
    cpu_backward(want, tape, in, c);
    expect_grads_close(cuda_backward(init, tape_d, in_d, c), want, 1e-3);
    // the downloaded CUDA tape (routing, final state) walks back on the CPU like the CPU's own
    kernels::cuda::kvm_tape_to_host(tape_d);
    Grads walked = init;
    cpu_backward(walked, tape_d, in, c);
    expect_grads_close(walked, want, 1e-4);
  }
}

TEST_F(CudaKvm, SnapshotBackwardMatchesReversible) {
  Case c = cases()[1];
  Inputs in(c, 400);
  DeviceInputs in_d(in);
  const Grads init(c, 500);
  kernels::KvmTape rev, snap;
  snap.snapshots = true;
  Vec o1 = cuda_forward(rev, in_d, c), o2 = cuda_forward(snap, in_d, c);
  EXPECT_EQ(o1, o2);
  expect_grads_close(cuda_backward(init, snap, in_d, c), cuda_backward(init, rev, in_d, c), 1e-5);
}

TEST_F(CudaKvm, DecodeMatchesCpuForward) {
  for (Case c : cases()) {
    c.B = 1;  // decode serves one sequence
    SCOPED_TRACE(c.name);
    Inputs in(c, 600);
    kernels::KvmTape tape;
    Vec pre = cpu_forward(tape, in, c);
    const int H = c.H, D = c.D, T = c.T;
    kernels::KvmCache cache(H, D, c.p);
    kernels::cuda::kvm_decode_init(cache, H, D);
    DeviceVec w(in.w), b(in.b), tf(in.tf), ts(in.ts), out{Vec((size_t)H * D)};
    for (int t = 0; t < T; t++) {
      Vec q((size_t)H * D), k((size_t)H * D), v((size_t)H * D), g(H), want((size_t)H * D);
      for (int h = 0; h < H; h++) {  // (H,T,D) -> (H,D) at position t
        size_t src = ((size_t)h * T + t) * D;
        std::copy_n(in.q.begin() + src, D, q.begin() + h * D);
        std::copy_n(in.k.begin() + src, D, k.begin() + h * D);
        std::copy_n(in.v.begin() + src, D, v.begin() + h * D);
        std::copy_n(pre.begin() + src, D, want.begin() + h * D);
        g[h] = in.g[(size_t)h * T + t];
      }
      DeviceVec q_d(q), k_d(k), v_d(v), g_d(g);
      kernels::cuda::kvm_decode_step(out.get(), cache, q_d.get(), k_d.get(), v_d.get(), g_d.get(), w.get(), b.get(),
                                     tf.get(), ts.get(), c.p);
      SCOPED_TRACE("position " + std::to_string(t));
      expect_close(out.host(), want, 1e-4, "decode out");
      if (HasFatalFailure()) return;
    }
  }
}

TEST_F(CudaKvm, BackwardRefusesAnotherTape) {
  Case c = cases()[0];
  Inputs in(c, 700);
  DeviceInputs in_d(in);
  kernels::KvmTape cpu_tape, tape_d;
  cpu_forward(cpu_tape, in, c);
  const Grads init(c, 800);
  EXPECT_THROW(cuda_backward(init, cpu_tape, in_d, c), std::runtime_error);  // no device part
  cuda_forward(tape_d, in_d, c);
  Case other = c;
  other.T = c.T - 1;
  EXPECT_THROW(cuda_backward(Grads(other, 800), tape_d, in_d, other), std::runtime_error);
  Grads g = init;  // and the CPU refuses the CUDA tape until it is downloaded
  EXPECT_THROW(cpu_backward(g, tape_d, in, c), std::runtime_error);
}

}  // namespace
