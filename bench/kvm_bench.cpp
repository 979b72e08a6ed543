// Prefill cost of one attention layer vs sequence length: full causal attention
// (kernels::cpu::attention_forward on a (1,T,3C) qkv) against KVM with a fixed 256-slot budget
// and with the paper's sqrt16 budget (kernels::cpu::kvm_forward), B=1, H=1, D=64, C=256, W=2.
// Per T: forward seconds (best of --reps) and the state a decoder would hold (fp32): full
// attention T keys and values, KVM M slots (s_k, s_v, s_len) plus the 2C-token window.
// Fits log(time) and log(memory) against log(T) by least squares over T >= 4096 and prints them
// beside the theory (time 2 / 1 / 1.5, memory 1 / 0 / 0.5), and the local slope over 1k..4k,
// where the 256-slot minimum and the 2C window still dominate and flatten the KVM curves.
// usage: kvm_bench [--max-T N] [--reps R] [--out FILE]   (plot: bench/kvm_bench_plot.py FILE)
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/json.h"
#include "kernels/kernels.h"
#include "kernels/kvm.h"

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

constexpr int D = 64, C = 256, W = 2;

struct Row {
  int T;
  double seconds[3];
  double state_bytes[3];
  int slots[3];
};

const char* kNames[3] = {"full", "kvm_fixed256", "kvm_sqrt16"};

// Least-squares slope of log(y) over log(T) for the rows with T >= t_min (and <= t_max).
double slope(const std::vector<Row>& rows, int which, bool memory, int t_min, int t_max) {
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  int n = 0;
  for (const Row& r : rows) {
    if (r.T < t_min || r.T > t_max) continue;
    double x = std::log((double)r.T), y = std::log(memory ? r.state_bytes[which] : r.seconds[which]);
    sx += x, sy += y, sxx += x * x, sxy += x * y, n++;
  }
  return n < 2 ? NAN : (n * sxy - sx * sy) / (n * sxx - sx * sx);
}

}  // namespace

int main(int argc, char** argv) {
  int max_T = 32768, reps = 2;
  std::string out_path = "bench/results/kvm_bench.json";
  for (int i = 1; i + 1 < argc; i++) {
    std::string a = argv[i];
    if (a == "--out") out_path = argv[++i];
    else if (a == "--max-T") max_T = std::stoi(argv[++i]);
    else if (a == "--reps") reps = std::stoi(argv[++i]);
  }
  kernels::KvmParams fixed;
  fixed.C = C, fixed.W = W, fixed.S = 1, fixed.R = D / 2, fixed.budget = kernels::KvmBudget::fixed, fixed.min_len = 256;
  kernels::KvmParams sqrt16 = fixed;
  sqrt16.budget = kernels::KvmBudget::power_law, sqrt16.power_f = 16, sqrt16.power_e = 0.5;

  std::printf("one layer, B=1, H=1, D=%d, C=%d, W=%d, %d OpenMP threads, best of %d\n\n", D, C, W,
              omp_get_max_threads(), reps);
  std::printf("%7s | %10s %10s %10s | %7s %7s | %10s %10s %10s\n", "T", "full s", "fixed s", "sqrt16 s", "M fix",
              "M sqrt", "full MiB", "fixed MiB", "sqrt MiB");
  std::vector<Row> rows;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int T = 1024; T <= max_T; T *= 2) {
    std::vector<float> q((size_t)T * D), k((size_t)T * D), v((size_t)T * D), g(T, 1.0f), out((size_t)T * D);
    for (auto* x : {&q, &k, &v})
      for (float& f : *x) f = nd(rng);
    std::vector<float> w(D, 1.0f), b(D, 0.0f), tau(1, 1.0f);
    std::vector<float> qkv((size_t)T * 3 * D), lse(T);
    for (int t = 0; t < T; t++)
      for (int d = 0; d < D; d++) {
        qkv[(size_t)t * 3 * D + d] = q[(size_t)t * D + d];
        qkv[(size_t)t * 3 * D + D + d] = k[(size_t)t * D + d];
        qkv[(size_t)t * 3 * D + 2 * D + d] = v[(size_t)t * D + d];
      }
    Row r{T, {1e30, 1e30, 1e30}, {}, {}};
    for (int rep = 0; rep < reps; rep++) {
      double t0 = now();
      kernels::cpu::attention_forward(out.data(), lse.data(), qkv.data(), 1, T, D, 1, 0, 0);
      r.seconds[0] = std::min(r.seconds[0], now() - t0);
      for (int which : {1, 2}) {
        kernels::KvmTape tape;
        t0 = now();
        kernels::cpu::kvm_forward(out.data(), tape, q.data(), k.data(), v.data(), g.data(), w.data(), b.data(),
                                  tau.data(), tau.data(), 1, 1, T, D, which == 1 ? fixed : sqrt16);
        r.seconds[which] = std::min(r.seconds[which], now() - t0);
        r.slots[which] = tape.final_slots(0, 0);
      }
    }
    r.slots[0] = T;
    r.state_bytes[0] = 2.0 * T * D * 4;
    for (int which : {1, 2}) r.state_bytes[which] = (r.slots[which] * (2.0 * D + 1) + std::min(T, W * C) * 2.0 * D) * 4;
    std::printf("%7d | %10.4f %10.4f %10.4f | %7d %7d | %10.3f %10.3f %10.3f\n", T, r.seconds[0], r.seconds[1],
                r.seconds[2], r.slots[1], r.slots[2], r.state_bytes[0] / 1048576, r.state_bytes[1] / 1048576,
                r.state_bytes[2] / 1048576);
    std::fflush(stdout);
    rows.push_back(r);
  }

  const double theory_time[3] = {2.0, 1.0, 1.5}, theory_mem[3] = {1.0, 0.0, 0.5};
  std::printf("\nlog-log slopes (least squares over T >= 4096; local slope over 1k..4k in brackets)\n");
  std::printf("%-14s %14s %8s %14s %8s\n", "", "time", "theory", "state memory", "theory");
  json::Object fits;
  for (int i = 0; i < 3; i++) {
    double st = slope(rows, i, false, 4096, 1 << 30), sm = slope(rows, i, true, 4096, 1 << 30);
    double lt = slope(rows, i, false, 1024, 4096), lm = slope(rows, i, true, 1024, 4096);
    std::printf("%-14s %6.2f [%5.2f] %8.1f %6.2f [%5.2f] %8.1f\n", kNames[i], st, lt, theory_time[i], sm, lm,
                theory_mem[i]);
    fits[kNames[i]] = json::Object{{"time_exponent", st}, {"time_exponent_1k_4k", lt},
                                   {"time_theory", theory_time[i]}, {"memory_exponent", sm},
                                   {"memory_exponent_1k_4k", lm}, {"memory_theory", theory_mem[i]}};
  }
  json::Array jrows;
  for (const Row& r : rows)
    for (int i = 0; i < 3; i++)
      jrows.emplace_back(json::Object{{"T", r.T}, {"layer", kNames[i]}, {"seconds", r.seconds[i]},
                                      {"state_slots", r.slots[i]}, {"state_bytes", r.state_bytes[i]}});
  json::Object result{{"bench", "kvm"}, {"B", 1}, {"H", 1}, {"D", D}, {"C", C}, {"W", W},
                      {"threads", omp_get_max_threads()}, {"reps", reps}};
  result["rows"] = std::move(jrows);
  result["fits"] = std::move(fits);
  if (auto dir = std::filesystem::path(out_path).parent_path(); !dir.empty()) std::filesystem::create_directories(dir);
  std::ofstream(out_path) << json::dump(result, 2) << "\n";
  std::printf("wrote %s\n", out_path.c_str());
  return 0;
}
