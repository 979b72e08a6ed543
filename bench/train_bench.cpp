// Training throughput of kvmtrain's GPT-2 on CPU: tokens/s and MFU of whole optimizer steps
// (forward, backward, clip, AdamW, and the bf16 copy of the weights in bf16) on random tokens,
// against the peak of the GEMM library kvmtrain uses (oneDNN, fp32 or bf16 operands as the run)
// measured in the same process at the MLP shape (B*T) x 4C x C; OpenBLAS's sgemm peak beside it.
// Two MFUs: `mfu` divides the mean step by the best peak of the whole run (measured before and
// after the steps); `mfu_paired` is the median over steps of each step against the peak measured
// right after it, which follows this shared machine's speed as it drifts (±15% within minutes).
// Writes JSON (--out, default bench/results/train_bench.json in the build tree) and prints one row.
// The flags are kUsage's below; --profile 1 times every kernel call (bench/timed_backend.h) and
// adds a per-kernel table, and one of the linear layers' GEMM rates per shape against the peak.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <omp.h>

#include "bench/gpt2_bench_flags.h"
#include "bench/timed_backend.h"
#include "common/json.h"
#include "kernels/backend.h"
#include "trainer/config/config.h"
#include "trainer/model/flops.h"
#include "trainer/model/model.h"
#include "trainer/optim/optimizer.h"
#include "common/rng.h"
#include "trainer/cli/runtime_env.h"

constexpr const char* kUsage =
    "usage: train_bench [--config configs/gpt2-124m.yaml] [--B 4] [--T 64] [--steps 4] [--precision fp32|bf16]\n"
    "                   [--profile 0|1] [--out FILE]\n";

int main(int argc, char** argv) {
  ensure_runtime_env(argv);  // the same runtime settings as kvmtrain itself
  Gpt2BenchFlags flags{.out = KVMTRAIN_BENCH_RESULTS "/train_bench.json", .steps = 4};
  std::string precision = "fp32";
  bool profile = false;
  const int parsed = flags.parse_args(argc, argv, "train_bench", kUsage, [&](const std::string& a, const char* v) {
    if (a == "--precision") precision = v;
    else if (a == "--profile") profile = std::atoi(v) != 0;
    else return false;
    return true;
  });
  if (parsed >= 0) return parsed;
  const std::string& config_path = flags.config_path;
  const std::string& out = flags.out;
  const int B = flags.B, T = flags.T, steps = flags.steps;
  // --precision is train.precision: the config checks its value
  config::Config cfg =
      config::load(config_path, {"train.seq_len=" + std::to_string(T), "train.precision=" + precision});
  const Backend& be = profile ? timed_backend::cpu() : cpu_backend();
  Model model(cfg.model, B, T, false, nullptr, be);
  model.init(1);
  const bool bf16 = cfg.train.precision == config::Precision::bf16;
  if (bf16) model.use_bf16(), model.refresh_bf16(1, 0);
  AdamW opt(model.table(), cfg.train, 0, SIZE_MAX, be);
  Rng rng(2);
  std::vector<int> x(size_t(B) * T), y(size_t(B) * T);
  for (size_t i = 0; i < x.size(); i++) x[i] = int(rng.next_u64() % cfg.model.vocab_size), y[i] = int(rng.next_u64() % cfg.model.vocab_size);

  const int C = cfg.model.d_model;
  // The peak is measured before and after the steps and the higher taken: a neighbour's burst
  // during one measurement would otherwise lower the yardstick and flatter the MFU.
  auto measure_peak = [&](double seconds) { return measure_gemm_peak(cpu_backend(), bf16, B * T, 4 * C, C, seconds); };
  double peak = measure_peak(2.0);
  const double openblas_peak = measure_openblas_sgemm_peak(B * T, 4 * C, C, 1.0);
  using clock = std::chrono::steady_clock;
  auto seconds = [](clock::time_point a, clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
  const double flops_token = 3.0 * model.flops_per_token(T);
  double best = 1e30, total = 0, fwd = 0, bwd = 0, upd = 0;  // upd: norm, AdamW and the bf16 copy
  std::vector<double> paired;  // per step: its MFU against the peak measured right after it
  for (int s = 0; s <= steps; s++) {  // step 0 warms up
    auto t0 = clock::now();
    model.zero_grad();
    model.forward(x.data(), B, T);
    model.loss(y.data(), 1.0f / float(B * T));
    auto t1 = clock::now();
    model.backward();
    auto t2 = clock::now();
    float norm = std::sqrt(norm_squared(be, model.grads(), model.table().total()));
    opt.step(model.params(), model.grads(), 1e-4f, clip_scale(norm, 1.0f));
    if (bf16) model.refresh_bf16(1, uint64_t(s + 1));
    auto t3 = clock::now();
    if (s == 0) timed_backend::totals().clear(), timed_backend::linear_totals().clear();  // warm-up: not timed
    if (s > 0) {
      best = std::min(best, seconds(t0, t3)), total += seconds(t0, t3);
      fwd += seconds(t0, t1), bwd += seconds(t1, t2), upd += seconds(t2, t3);
      paired.push_back(B * T * flops_token / seconds(t0, t3) / measure_peak(0.4));
    }
  }
  std::vector<double> sorted = paired;
  std::sort(sorted.begin(), sorted.end());
  const double mfu_paired = sorted.size() % 2 ? sorted[sorted.size() / 2]
                                              : (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]) / 2;
  peak = std::max(peak, measure_peak(2.0));
  const double mean_step = total / steps;
  const double tok_s = B * T / mean_step;
  const double mfu = tok_s * flops_token / peak;
  json::Object row{{"impl", "kvmtrain"}, {"B", B}, {"T", T}, {"threads", omp_get_max_threads()},
                   {"params", uint64_t(model.num_params())}, {"step_s_mean", mean_step}, {"step_s_best", best},
                   {"forward_s_mean", fwd / steps}, {"backward_s_mean", bwd / steps}, {"update_s_mean", upd / steps},
                   {"tokens_per_s", tok_s}, {"flops_per_token", flops_token}, {"precision", precision},
                   {"gemm_peak_flops", peak}, {"openblas_sgemm_peak_flops", openblas_peak}, {"mfu", mfu},
                   {"mfu_paired", mfu_paired}, {"mfu_per_step", json::Array(paired.begin(), paired.end())}};
  if (profile) {
    json::Object per_kernel;
    std::vector<std::pair<double, std::string>> rows;
    for (const auto& [name, t] : timed_backend::totals()) rows.emplace_back(t.seconds / steps, name);
    std::sort(rows.rbegin(), rows.rend());
    std::printf("%-34s %10s %7s\n", "kernel", "s/step", "share");
    for (const auto& [sec, name] : rows) {
      per_kernel[name] = sec;
      std::printf("%-34s %10.4f %6.1f%%\n", name.c_str(), sec, 100 * sec / mean_step);
    }
    row["kernel_s_per_step"] = per_kernel;
    // The linear layers' GEMMs against the peak: with the rest of the step, what MFU is made of
    json::Object per_shape;
    double linear_s = 0, linear_flops = 0;
    std::printf("\n%-44s %10s %8s %8s %8s\n", "linear layer (kernel N x IC->OC)", "calls/step", "ms/call", "GFLOP/s",
                "of peak");
    for (const auto& [shape, t] : timed_backend::linear_totals()) {
      linear_s += t.seconds, linear_flops += t.flops;
      per_shape[shape] = json::Object{{"s_per_step", t.seconds / steps}, {"flops_per_s", t.flops / t.seconds}};
      std::printf("%-44s %10.0f %8.3f %8.1f %7.1f%%\n", shape.c_str(), double(t.calls) / steps, 1e3 * t.seconds / t.calls,
                  t.flops / t.seconds / 1e9, 100 * t.flops / t.seconds / peak);
    }
    if (linear_s > 0) {
      std::printf("linear layers: %.1f%% of the step at %.1f GFLOP/s, %.1f%% of the peak; the rest %.3f s a step\n",
                  100 * linear_s / total, linear_flops / linear_s / 1e9, 100 * linear_flops / linear_s / peak,
                  (total - linear_s) / steps);
      row["linear_s_per_step"] = linear_s / steps;
      row["linear_flops_per_s"] = linear_flops / linear_s;
      row["linear_by_shape"] = per_shape;
    }
  }
  std::ofstream(out) << json::dump(row, 2) << "\n";
  std::printf("kvmtrain %s B=%d T=%-4d threads=%d  %8.1f tok/s  step %.3fs (fwd %.3f bwd %.3f update %.3f)  mfu %5.1f%%"
              " (paired %5.1f%%)  oneDNN %s peak %.1f GFLOP/s  (OpenBLAS sgemm %.1f)\n", precision.c_str(), B, T,
              omp_get_max_threads(), tok_s, mean_step, fwd / steps, bwd / steps, upd / steps, 100 * mfu,
              100 * mfu_paired, precision.c_str(), peak / 1e9, openblas_peak / 1e9);
  return 0;
}
