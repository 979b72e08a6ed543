// KVM attention core against the paper's reference code: every tests/fixtures/kvm/*.h5 (written by
// model/kvm_mixer.py in fp64, see the README there) is replayed with the settings in its
// attributes, and the forward output, the final state, the slot count after every update, the
// routing of every token and every gradient are compared.
// Tolerances, absolute, with y = the file's fp32_ref_max_abs_err_* (the reference's own fp32 run):
//   out, s_k, s_v, dq, dk, dv, dg: max(10 y, 1e-5); s_len: 1e-5 (1 + |want|);
//   d_ln_s_weight/bias, d_tau_front/state (sums over every token, no yardstick): 1e-4 (1 + |want|).
//   routing kind/slot and the slot counts: exact (the fixtures keep margins >= 1e-3).
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/kvm.h"

namespace fs = std::filesystem;

namespace {

// Read access to one fixture: root attributes and whole datasets.
class H5 {
 public:
  explicit H5(const fs::path& path) : id_(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT)) {
    if (id_ < 0) throw std::runtime_error("kvm fixture: expected a readable HDF5 file at " + path.string());
  }
  ~H5() { H5Fclose(id_); }
  H5(const H5&) = delete;
  H5& operator=(const H5&) = delete;

  std::string str(const char* name) const {
    hid_t a = open_attr(name), type = H5Aget_type(a);
    if (H5Tget_class(type) != H5T_STRING) throw std::runtime_error(std::string("kvm fixture: expected string attribute ") + name);
    std::string s(H5Tget_size(type) + 1, '\0');
    H5Aread(a, type, s.data());
    H5Tclose(type), H5Aclose(a);
    return s.substr(0, s.find('\0'));
  }
  long long integer(const char* name) const {
    long long x = 0;
    read_attr(name, H5T_INTEGER, H5T_NATIVE_LLONG, &x);
    return x;
  }
  double real(const char* name) const {
    double x = 0;
    read_attr(name, H5T_FLOAT, H5T_NATIVE_DOUBLE, &x);
    return x;
  }
  // The whole dataset, checked to hold `count` elements.
  template <class T>
  std::vector<T> data(const char* path, size_t count, hid_t mem_type) const {
    hid_t d = H5Dopen2(id_, path, H5P_DEFAULT);
    if (d < 0) throw std::runtime_error(std::string("kvm fixture: expected dataset ") + path);
    hid_t space = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(space);
    H5Sclose(space);
    if ((size_t)n != count)
      throw std::runtime_error(std::string("kvm fixture: expected ") + std::to_string(count) + " elements in " + path);
    std::vector<T> out(count);
    if (count > 0 && H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
      throw std::runtime_error(std::string("kvm fixture: could not read ") + path);
    H5Dclose(d);
    return out;
  }

 private:
  hid_t open_attr(const char* name) const {
    hid_t a = H5Aexists(id_, name) > 0 ? H5Aopen(id_, name, H5P_DEFAULT) : -1;
    if (a < 0) throw std::runtime_error(std::string("kvm fixture: expected root attribute ") + name);
    return a;
  }
  void read_attr(const char* name, H5T_class_t cls, hid_t mem, void* out) const {
    hid_t a = open_attr(name), type = H5Aget_type(a);
    bool ok = H5Tget_class(type) == cls;
    if (ok) H5Aread(a, mem, out);
    H5Tclose(type), H5Aclose(a);
    if (!ok) throw std::runtime_error(std::string("kvm fixture: unexpected type of attribute ") + name);
  }
  hid_t id_;
};

fs::path fixture_dir() {
  const char* env = std::getenv("KVMTRAIN_SOURCE_DIR");
  return fs::path(env ? env : KVMTRAIN_SOURCE_DIR) / "tests" / "fixtures" / "kvm";
}

bool flag(const H5& f, const char* name) {
  long long x = f.integer(name);
  if (x != 0 && x != 1) throw std::runtime_error(std::string("kvm fixture: expected 0 or 1 in ") + name);
  return x == 1;
}

kernels::KvmParams params_of(const H5& f) {
  if (f.str("format") != "kvm-fixture-v1") throw std::runtime_error("kvm fixture: expected format kvm-fixture-v1");
  if (f.str("storage_dtype") != "float32") throw std::runtime_error("kvm fixture: expected storage_dtype float32");
  if (f.integer("round_down") != 1) throw std::runtime_error("kvm fixture: expected round_down = 1");
  kernels::KvmParams p;
  p.C = (int)f.integer("C"), p.W = (int)f.integer("W"), p.S = (int)f.integer("S"), p.R = (int)f.integer("R");
  std::string mode = f.str("budget_mode");
  if (mode == "fixed") p.budget = kernels::KvmBudget::fixed;
  else if (mode == "power_law") p.budget = kernels::KvmBudget::power_law;
  else if (mode == "kvm_saturation") p.budget = kernels::KvmBudget::saturating;
  else throw std::runtime_error("kvm fixture: expected budget_mode fixed|power_law|kvm_saturation, got " + mode);
  p.min_len = (int)f.integer("min_len");
  p.power_f = f.real("power_f"), p.power_e = f.real("power_e");
  p.sat_n = (int)f.integer("sat_n");
  p.max_slots = (int)f.integer("Mmax");
  p.vlens = flag(f, "use_vlens");
  p.head_temps = flag(f, "use_head_temps");
  p.merge_gate_keys = flag(f, "merge_gate_keys");
  p.merge_gate_values = flag(f, "merge_gate_values");
  p.gate_appends = flag(f, "gate_appends");
  p.gate_initial_state = flag(f, "gate_initial_state");
  p.ln_eps = (float)f.real("ln_eps");
  return p;
}

// max |got - want| <= tol (1 + rel |want|); prints the max error for the record.
void expect_close(const float* got, const std::vector<float>& want, double tol, bool rel, const std::string& what) {
  double worst = 0.0;
  size_t at = 0;
  for (size_t i = 0; i < want.size(); i++) {
    double e = std::abs((double)got[i] - want[i]) / (rel ? 1.0 + std::abs(want[i]) : 1.0);
    if (!(e <= worst)) worst = e, at = i;  // NaN counts as worst
  }
  std::printf("  %-16s max err %.3g (tol %.3g%s)\n", what.c_str(), worst, tol, rel ? " rel" : "");
  EXPECT_LE(worst, tol) << what << "[" << at << "]: got " << got[at] << ", want " << want[at];
}

void check_fixture(const fs::path& path) {
  H5 f(path);
  kernels::KvmParams p = params_of(f);
  int B = (int)f.integer("B"), H = (int)f.integer("H"), T = (int)f.integer("T"), D = (int)f.integer("D");
  int U = (int)f.integer("n_updates"), M = (int)f.integer("M_final");
  size_t N = (size_t)B * H * T * D, NT = (size_t)B * H * T;
  auto F = [&](const char* name, size_t n) { return f.data<float>(name, n, H5T_NATIVE_FLOAT); };
  auto I = [&](const char* name, size_t n) { return f.data<int>(name, n, H5T_NATIVE_INT); };
  auto tol = [&](const char* y) { return std::max(10.0 * f.real(y), 1e-5); };
  auto q = F("inputs/q", N), k = F("inputs/k", N), v = F("inputs/v", N), g = F("inputs/g", NT);
  auto dout = F("inputs/dout", N);
  auto w = F("params/ln_s_weight", D), bias = F("params/ln_s_bias", D);
  auto tf = F("params/tau_front", H), ts = F("params/tau_state", H);

  kernels::KvmTape tape;
  std::vector<float> out(N);
  kernels::cpu::kvm_forward(out.data(), tape, q.data(), k.data(), v.data(), g.data(), w.data(), bias.data(),
                            tf.data(), ts.data(), B, H, T, D, p);
  expect_close(out.data(), F("outputs/out", N), tol("fp32_ref_max_abs_err_out"), false, "out");

  // slot counts and routing: exact
  EXPECT_EQ(tape.slots_after_update(), I("schedule/m_after", U)) << "slots after each update";
  auto kind = f.data<signed char>("routing/kind", NT, H5T_NATIVE_SCHAR);
  auto slot = I("routing/slot", NT);
  int wrong = 0;
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int t = 0; t < T; t++) {
        size_t i = ((size_t)b * H + h) * T + t;
        bool ok = tape.routing_kind(b, h, t) == kind[i] && tape.routing_slot(b, h, t) == slot[i];
        if (!ok && wrong++ < 5)
          ADD_FAILURE() << "routing of (b,h,t)=(" << b << "," << h << "," << t << "): got kind "
                        << tape.routing_kind(b, h, t) << " slot " << tape.routing_slot(b, h, t) << ", want kind "
                        << (int)kind[i] << " slot " << slot[i];
      }
  EXPECT_EQ(wrong, 0) << "tokens routed differently";

  // final state
  auto s_k = F("state/s_k", (size_t)B * H * M * D), s_v = F("state/s_v", (size_t)B * H * M * D);
  auto s_len = F("state/s_len", (size_t)B * H * M);
  std::vector<float> gk, gv, gl;
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      ASSERT_EQ(tape.final_slots(b, h), M) << "final slots of (b,h)=(" << b << "," << h << ")";
      gk.insert(gk.end(), tape.final_s_k(b, h), tape.final_s_k(b, h) + (size_t)M * D);
      gv.insert(gv.end(), tape.final_s_v(b, h), tape.final_s_v(b, h) + (size_t)M * D);
      gl.insert(gl.end(), tape.final_s_len(b, h), tape.final_s_len(b, h) + M);
    }
  expect_close(gk.data(), s_k, tol("fp32_ref_max_abs_err_s_k"), false, "s_k");
  expect_close(gv.data(), s_v, tol("fp32_ref_max_abs_err_s_v"), false, "s_v");
  expect_close(gl.data(), s_len, 1e-5, true, "s_len");

  // gradients (buffers start at zero; the kernel accumulates)
  std::vector<float> dq(N), dk(N), dv(N), dg(NT), dw(D), db(D), dtf(H), dts(H);
  kernels::cpu::kvm_backward(dq.data(), dk.data(), dv.data(), dg.data(), dw.data(), db.data(), dtf.data(), dts.data(),
                             dout.data(), tape, q.data(), k.data(), v.data(), g.data(), w.data(), bias.data(),
                             tf.data(), ts.data(), B, H, T, D, p);
  expect_close(dq.data(), F("grads/dq", N), tol("fp32_ref_max_abs_err_dq"), false, "dq");
  expect_close(dk.data(), F("grads/dk", N), tol("fp32_ref_max_abs_err_dk"), false, "dk");
  expect_close(dv.data(), F("grads/dv", N), tol("fp32_ref_max_abs_err_dv"), false, "dv");
  expect_close(dg.data(), F("grads/dg", NT), tol("fp32_ref_max_abs_err_dg"), false, "dg");
  expect_close(dw.data(), F("grads/d_ln_s_weight", D), 1e-4, true, "d_ln_s_weight");
  expect_close(db.data(), F("grads/d_ln_s_bias", D), 1e-4, true, "d_ln_s_bias");
  expect_close(dtf.data(), F("grads/d_tau_front", H), 1e-4, true, "d_tau_front");
  expect_close(dts.data(), F("grads/d_tau_state", H), 1e-4, true, "d_tau_state");
}

TEST(KvmFixture, EveryFileMatchesTheReference) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(fixture_dir()))
    if (e.path().extension() == ".h5") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  ASSERT_FALSE(files.empty()) << "no .h5 fixtures in " << fixture_dir();
  for (const auto& path : files) {
    SCOPED_TRACE(path.filename().string());
    std::printf("%s\n", path.filename().c_str());
    try {
      check_fixture(path);
    } catch (const std::exception& e) {
      ADD_FAILURE() << e.what();
    }
  }
}

}  // namespace
