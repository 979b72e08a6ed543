// What the backend table (test_backend_ops.cpp, which compares the CUDA KVM twins' outputs and
// gradients with the CPU's) cannot see of the CUDA KVM core: the routing and the final states that
// kvm_tape_to_host downloads, the CPU backward walking that downloaded tape back, the snapshot
// backward against the reversible one, and the refusal of a tape of another backend or shape. On
// the settings of tests/kernels/kvm_cases.h. Skipped, with a message, where no CUDA device is
// present.
// Tolerances, |x - want| <= tol * (1 + |want|):
//  - exact: the routing (kind and slot of every token), the slot counts after every update;
//  - 1e-5: the final state sums and s_len against the CPU's (both build them in double from the
//    same fp32 terms); the snapshot backward against the reversible one;
//  - 1e-4: the CPU backward walking the downloaded CUDA tape back against the CPU's own.
#include <gtest/gtest.h>

#include "tests/cuda_test_util.h"
#include "tests/kernels/kvm_cases.h"
#include "tests/test_util.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/kernels.h"
#include "kernels/kvm.h"

namespace {

using Vec = std::vector<float>;
using test_util::DeviceVec;
using test_util::expect_close;
using test_util::KvmCase;
using test_util::KvmInputs;

// Gradients to accumulate onto, random.
struct Grads {
  Vec dq, dk, dv, dg, dw, db, dtf, dts;
  explicit Grads(const KvmCase& c, uint32_t seed) {
    size_t N = (size_t)c.B * c.H * c.T * c.D, NG = (size_t)c.B * c.H * c.T;
    dq = test_util::randn(N, seed), dk = test_util::randn(N, seed + 1), dv = test_util::randn(N, seed + 2);
    dg = test_util::randn(NG, seed + 3), dw = test_util::randn(c.D, seed + 4), db = test_util::randn(c.D, seed + 5);
    dtf = test_util::randn(c.H, seed + 6), dts = test_util::randn(c.H, seed + 7);
  }
};

// The inputs on the device.
struct DeviceInputs {
  DeviceVec q, k, v, g, dout, w, b, tf, ts;
  explicit DeviceInputs(const KvmInputs& in)
      : q(in.q), k(in.k), v(in.v), g(in.g), dout(in.dout), w(in.w), b(in.b), tf(in.tf), ts(in.ts) {}
};

Vec cpu_forward(kernels::KvmTape& tape, const KvmInputs& in, const KvmCase& c) {
  Vec out(in.q.size());
  kernels::cpu::kvm_forward(out.data(), tape, in.q.data(), in.k.data(), in.v.data(), in.g.data(), in.w.data(),
                            in.b.data(), in.tf.data(), in.ts.data(), c.B, c.H, c.T, c.D, c.p);
  return out;
}

Vec cuda_forward(kernels::KvmTape& tape, DeviceInputs& in, const KvmCase& c) {
  DeviceVec out{Vec((size_t)c.B * c.H * c.T * c.D, 7.0f)};
  kernels::cuda::kvm_forward(out.get(), tape, in.q.get(), in.k.get(), in.v.get(), in.g.get(), in.w.get(),
                             in.b.get(), in.tf.get(), in.ts.get(), c.B, c.H, c.T, c.D, c.p);
  return out.host();
}

void cpu_backward(Grads& gr, const kernels::KvmTape& tape, const KvmInputs& in, const KvmCase& c) {
  kernels::cpu::kvm_backward(gr.dq.data(), gr.dk.data(), gr.dv.data(), gr.dg.data(), gr.dw.data(), gr.db.data(),
                             gr.dtf.data(), gr.dts.data(), in.dout.data(), tape, in.q.data(), in.k.data(),
                             in.v.data(), in.g.data(), in.w.data(), in.b.data(), in.tf.data(), in.ts.data(), c.B, c.H,
                             c.T, c.D, c.p);
}

Grads cuda_backward(const Grads& init, const kernels::KvmTape& tape, DeviceInputs& in, const KvmCase& c) {
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

TEST_F(CudaKvm, DownloadedRoutingAndStateMatchCpu) {
  for (const KvmCase& c : test_util::kvm_cases()) {
    SCOPED_TRACE(c.name);
    KvmInputs in(c, 100);
    DeviceInputs in_d(in);
    kernels::KvmTape tape, tape_d;
    cpu_forward(tape, in, c);
    cuda_forward(tape_d, in_d, c);
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

// the downloaded CUDA tape (routing, final state) walks back on the CPU like the CPU's own
TEST_F(CudaKvm, DownloadedTapeWalksBackOnCpu) {
  for (const KvmCase& c : test_util::kvm_cases()) {
    SCOPED_TRACE(c.name);
    KvmInputs in(c, 200);
    DeviceInputs in_d(in);
    const Grads init(c, 300);  // gradients accumulate: start from random values
    kernels::KvmTape tape, tape_d;
    cpu_forward(tape, in, c);
    cuda_forward(tape_d, in_d, c);
    Grads want = init;
    cpu_backward(want, tape, in, c);
    kernels::cuda::kvm_tape_to_host(tape_d);
    Grads walked = init;
    cpu_backward(walked, tape_d, in, c);
    expect_grads_close(walked, want, 1e-4);
  }
}

TEST_F(CudaKvm, SnapshotBackwardMatchesReversible) {
  KvmCase c = test_util::kvm_cases()[1];
  KvmInputs in(c, 400);
  DeviceInputs in_d(in);
  const Grads init(c, 500);
  kernels::KvmTape rev, snap;
  snap.snapshots = true;
  Vec o1 = cuda_forward(rev, in_d, c), o2 = cuda_forward(snap, in_d, c);
  EXPECT_EQ(o1, o2);
  expect_grads_close(cuda_backward(init, snap, in_d, c), cuda_backward(init, rev, in_d, c), 1e-5);
}

TEST_F(CudaKvm, BackwardRefusesAnotherTape) {
  KvmCase c = test_util::kvm_cases()[0];
  KvmInputs in(c, 700);
  DeviceInputs in_d(in);
  kernels::KvmTape cpu_tape, tape_d;
  cpu_forward(cpu_tape, in, c);
  const Grads init(c, 800);
  EXPECT_THROW(cuda_backward(init, cpu_tape, in_d, c), std::runtime_error);  // no device part
  cuda_forward(tape_d, in_d, c);
  KvmCase other = c;
  other.T = c.T - 1;
  EXPECT_THROW(cuda_backward(Grads(other, 800), tape_d, in_d, other), std::runtime_error);
  Grads g = init;  // and the CPU refuses the CUDA tape until it is downloaded
  EXPECT_THROW(cpu_backward(g, tape_d, in, c), std::runtime_error);
}

}  // namespace
