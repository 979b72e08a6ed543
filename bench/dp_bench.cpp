// Data-parallel training throughput, run under `mpiexec -n N` (bench/dp_bench.sh runs N = 1 and
// 2): whole optimizer steps of GPT-2 (forward, backward, gradient average, norm, AdamW) on random
// tokens, each rank its own batch of B x T, for plain data parallelism (all-reduce) and ZeRO-1
// (reduce to the owners, then all-gather of the parameters), each with gradient buckets reduced
// during the backward and with one reduction after it. Per mode: tokens/s over all ranks, the
// time spent waiting for the gradients after the backward (what the overlap did not hide), the
// optimizer step (with ZeRO-1's all-gather), and the bytes each rank sends per step, as a ring
// algorithm sends them: 2(N-1)/N x the gradient bytes for an all-reduce, (N-1)/N for a
// reduce-scatter and again for the all-gather. Also one all-reduce of all the gradients alone,
// for the bandwidth the ranks see. Rank 0 writes JSON (--out) and prints a table. The flags are
// kUsage's below.
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "bench/gpt2_bench_flags.h"
#include "common/json.h"
#include "trainer/parallel/communicator.h"
#include "trainer/config/config.h"
#include "trainer/parallel/data_parallel.h"
#include "trainer/model/model.h"
#include "trainer/optim/optimizer.h"
#include "common/rng.h"
#include "trainer/cli/runtime_env.h"

namespace {

using clock_type = std::chrono::steady_clock;
double since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

struct Timing {
  double step_s = 0, wait_s = 0, update_s = 0;  // means over the timed steps (the slowest rank's)
};

// `steps` timed steps after one warm-up step.
Timing run(Model& model, DataParallel& dp, Communicator& world, const std::vector<int>& x, const std::vector<int>& y,
           int B, int T, int steps) {
  Timing t;
  for (int s = 0; s <= steps; s++) {
    world.barrier();
    const auto t0 = clock_type::now();
    model.zero_grad();
    model.forward(x.data(), B, T);
    model.loss(y.data(), 1.0f / float(B * T));
    dp.start_gradients(model.grads());
    model.backward();
    const auto t1 = clock_type::now();
    dp.finish_gradients();
    const double wait = since(t1);
    const auto t2 = clock_type::now();
    const float norm = float(std::sqrt(dp.grad_norm_squared(model.grads(), nullptr)));
    dp.step(model.params(), model.grads(), 1e-4f, clip_scale(norm, 1.0f));
    float times[3] = {float(since(t0)), float(wait), float(since(t2))};
    if (s == 0) continue;
    // the slowest rank sets the pace
    std::vector<float> all(3 * size_t(world.size()));
    world.all_gather(times, all.data(), 3);
    for (size_t i = 0; i < all.size(); i++) times[i % 3] = std::max(times[i % 3], all[i]);
    t.step_s += times[0] / steps, t.wait_s += times[1] / steps, t.update_s += times[2] / steps;
  }
  return t;
}

constexpr const char* kUsage =
    "usage: mpiexec -n N dp_bench [--config configs/gpt2-124m.yaml] [--B 4] [--T 64] [--steps 3] [--bucket-mb 25]\n"
    "                             [--out FILE]\n";

}  // namespace

int main(int argc, char** argv) {
  ensure_runtime_env(argv);
  comm_init(&argc, &argv);
  Gpt2BenchFlags flags{.out = KVMTRAIN_BENCH_RESULTS "/dp_bench.json", .steps = 3};
  double bucket_mb = 25;
  const int parsed = flags.parse_args(argc, argv, "dp_bench", kUsage, [&](const std::string& a, const char* v) {
    if (a != "--bucket-mb") return false;
    bucket_mb = std::atof(v);
    return true;
  });
  if (parsed >= 0) return comm_finalize(), parsed;
  const std::string& config_path = flags.config_path;
  const std::string& out = flags.out;
  const int B = flags.B, T = flags.T, steps = flags.steps;
  auto world = make_world_communicator();
  const int N = world->size();
  config::Config cfg = config::load(config_path, {"train.seq_len=" + std::to_string(T)});
  Model model(cfg.model, B, T);
  Rng rng(2 + uint64_t(world->rank()));  // each rank its own batch
  std::vector<int> x(size_t(B) * T), y(size_t(B) * T);
  for (size_t i = 0; i < x.size(); i++) {
    x[i] = int(rng.next_u64() % cfg.model.vocab_size);
    y[i] = int(rng.next_u64() % cfg.model.vocab_size);
  }
  const size_t P = model.table().total();
  const double grad_bytes = 4.0 * double(P), param_bytes = 4.0 * double(model.num_params()), ring = double(N - 1) / N;
  // the bandwidth the ranks see: one all-reduce of every gradient (the best of two)
  double allreduce_s = 1e30;
  model.zero_grad();
  for (int i = 0; i < 2; i++) {
    world->barrier();
    const auto t0 = clock_type::now();
    world->all_reduce_sum(model.grads(), P);
    allreduce_s = std::min(allreduce_s, since(t0));
  }
  const double busbw_gb_s = N == 1 ? 0.0 : 2 * ring * grad_bytes / allreduce_s / 1e9;

  struct Mode {
    const char* name;
    bool zero1;
    double bucket_mb;
  };
  std::vector<Mode> modes = {{"all-reduce, buckets", false, bucket_mb}, {"all-reduce, one after backward", false, 0},
                             {"ZeRO-1, buckets", true, bucket_mb},      {"ZeRO-1, one after backward", true, 0}};
  if (N == 1) modes = {{"1 rank", true, 0}};  // no communication: every mode is the same
  json::Array rows;
  std::vector<std::string> table;
  for (const auto& m : modes) {
    model.init(1);
    DataParallel dp(*world, model.table(), cfg.train, size_t(m.bucket_mb * 1048576 / sizeof(float)), m.zero1);
    model.on_grads_ready([&dp](size_t begin, size_t end) { dp.gradients_ready(begin, end); });
    const Timing t = run(model, dp, *world, x, y, B, T, steps);
    // what each rank sends per step (ring algorithms) and hands to collectives
    const double sent = N == 1 ? 0 : 2 * ring * grad_bytes;
    const double payload = N == 1 ? 0 : m.zero1 ? 2 * grad_bytes : grad_bytes;
    const double tok_s = double(B) * T * N / t.step_s;
    rows.push_back(json::Object{{"mode", m.name},
                                {"zero1", m.zero1},
                                {"bucket_mb", m.bucket_mb},
                                {"buckets", dp.buckets()},
                                {"buckets_during_backward", dp.buckets_overlapped()},
                                {"step_s", t.step_s},
                                {"grad_wait_s", t.wait_s},
                                {"update_s", t.update_s},
                                {"tokens_per_s", tok_s},
                                {"bytes_sent_per_rank", sent},
                                {"bytes_to_collectives_per_rank", payload}});
    char line[256];
    std::snprintf(line, sizeof line, "%-32s %8d %10.1f %9.3f %9.3f %9.3f %12.2f", m.name, dp.buckets(), tok_s, t.step_s,
                  t.wait_s, t.update_s, sent / param_bytes);
    table.push_back(line);
  }
  if (world->rank() == 0) {
    json::Object doc{{"config", config_path}, {"B", B}, {"T", T}, {"ranks", N}, {"threads", omp_get_max_threads()},
                     {"steps", steps}, {"params", uint64_t(model.num_params())}, {"param_bytes_fp32", param_bytes},
                     {"grad_bytes", grad_bytes}, {"allreduce_s", N == 1 ? 0.0 : allreduce_s},
                     {"allreduce_busbw_gb_s", busbw_gb_s}, {"modes", rows}};
    std::ofstream(out) << json::dump(doc, 2) << "\n";
    std::printf("%d rank(s) x B=%d T=%d, %d thread(s) each, %.1fM parameters (%.0f MB fp32)\n", N, B, T,
                omp_get_max_threads(), model.num_params() / 1e6, param_bytes / 1e6);
    if (N > 1)
      std::printf("one all-reduce of the gradients alone: %.3f s (bus bandwidth %.2f GB/s)\n", allreduce_s, busbw_gb_s);
    std::printf("%-32s %8s %10s %9s %9s %9s %12s\n", "mode", "buckets", "tok/s", "step s", "wait s", "update s",
                "sent/params");
    for (const auto& line : table) std::printf("%s\n", line.c_str());
  }
  world.reset();
  comm_finalize();
  return 0;
}
