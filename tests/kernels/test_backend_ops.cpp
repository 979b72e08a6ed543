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
//    axpby_rows, the linear value residual but its dw;
//  - 1e-5: GELU (the two tanh differ by ~2e-7), elu_gate backward, encoder backward (atomicAdd
//    order), layernorm and head_layernorm forward, cross-entropy and its shard phases (expf against
//    the CPU's exp, sums in another order), the rwkv value residual's sigmoid gate (expf against
//    vexp);
//  - 1e-4: sums of hundreds of terms in another order: layernorm and head_layernorm backward,
//    token shift dmix, value residual dw, the matmuls (cuBLASLt fp32 without TF32; bf16: the same rounded operands),
//    the GELU epilogue, attention forward, backward and decode, KVM forward and decode;
//  - 1e-3: the KVM gradients (sums over every read-out and token in another order).
// Against the naive references (cpu): 1e-5, 2e-5 where a float exp or tanh is involved, exact for
// data movement and rounding; the bf16 matmuls' references take the bf16-rounded operands.
#include "tests/kernels/backend_ops.h"

#include <gtest/gtest.h>

namespace {

using namespace backend_ops;

// ---- the table --------------------------------------------------------------------------------

const std::vector<Case>& cases() {
  static const std::vector<Case> all = [] {
    std::vector<Case> cs = dense_cases(), more = more_cases();
    cs.insert(cs.end(), more.begin(), more.end());
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
