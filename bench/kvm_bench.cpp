// Cost of one attention layer vs sequence length, on the CPU (the default) or one GPU.
//
// --device cpu: prefill of full causal attention (kernels::cpu::attention_forward on a (1,T,3C)
// qkv) against KVM with a fixed 256-slot budget and with the paper's sqrt16 budget
// (kernels::cpu::kvm_forward), B=1, H=1, D=64, C=256, W=2, T = 1024, 2048, ... --max-T.
// Per T: forward seconds (best of --reps) and the state a decoder would hold (fp32): full
// attention T keys and values, KVM M slots (s_k, s_v, s_len) plus the 2C-token window.
// Fits log(time) and log(memory) against log(T) by least squares over T >= 4096 and prints them
// beside the theory (time 2 / 1 / 1.5, memory 1 / 0 / 0.5), and the local slope over 1k..4k,
// where the 256-slot minimum and the 2C window still dominate and flatten the KVM curves.
//
// --device cuda: the paper's shape, B=8, H=32, D=128, T in --T, through the cuda backend table:
// the KVM layer of configs/paper/120M/kvm_sqrt16_wd.yaml (fp32 kernels) against full causal
// attention, the native CUDA kernels (fp32) and cuDNN's fused flash attention (bf16 inside, fp32
// in and out: the conversions are timed, as training pays them). Per T and layer: forward
// (prefill) and backward ms, the median of --reps after a warm-up, each between two waits for the
// device; decode ms per token for one sequence (KVM: the mean over the 256 tokens up to T, one
// chunk fold among them; native attention: token T-1 over T cached keys; cuDNN has no decode
// kernel). Also the bf16 cuBLASLt GEMM peak at 8192^3 (MFU's yardstick without launch overhead).
// --budget-s S: a layer is not started at a larger T once its predicted wall time (its last T's
// scaled by the square of the length ratio) exceeds what is left of S; what was skipped is
// printed and listed in the JSON, which is rewritten after every T.
// usage: kvm_bench [--device cpu|cuda] [--reps R] [--out FILE] [--max-T N | --T T1,T2,... --budget-s S]
// (plot of the cpu JSON: bench/kvm_bench_plot.py FILE)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/rng.h"
#include "kernels/backend.h"
#include "kernels/kernels.h"
#include "kernels/kvm.h"
#include "trainer/model/flops.h"

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

// Writes `value` to `path` under a temporary name and renames it, so a reader (launch/gpu_check.sh
// after a timeout) never finds half a file.
void write_json(const std::string& path, const json::Value& value) {
  if (auto dir = std::filesystem::path(path).parent_path(); !dir.empty()) std::filesystem::create_directories(dir);
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << json::dump(value, 2) << "\n";
  std::filesystem::rename(tmp, path);
}

void run_cpu(int max_T, int reps, const std::string& out_path) {
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
  write_json(out_path, result);
  std::printf("wrote %s\n", out_path.c_str());
}

// ---- --device cuda: the paper's shape on one GPU, KVM against full attention ----------------
constexpr int kB = 8, kH = 32, kD = 128, kWidth = kH * kD;  // the model width the qkv rows hold
constexpr int kDecodeTokens = 256;  // one KVM chunk: the mean per token includes exactly one fold

// configs/paper/120M/kvm_sqrt16_wd.yaml's KVM layer: chunk 256, 2 window chunks, 1 sink, the
// paper's partial RoPE (R = D/2) and the state budget max(16 sqrt(ctx), 256), at most 2560000 slots.
kernels::KvmParams paper_sqrt16() {
  kernels::KvmParams p;
  p.C = 256, p.W = 2, p.S = 1, p.R = kD / 2, p.budget = kernels::KvmBudget::power_law, p.power_f = 16;
  p.power_e = 0.5, p.min_len = 256, p.max_slots = 2560000;
  return p;
}

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}

// The host clock, read once the device has finished what was queued before (a copy to the host
// waits for the kernels before it on the default stream, where every kernel here runs).
struct DeviceClock {
  const Backend& be;
  const float* probe;  // any device float
  double now() const {
    float x;
    be.to_host(&x, probe, sizeof x);
    return ::now();
  }
};

// Forward and backward ms of one layer: the medians over `reps` runs after one warm-up run.
struct PrefillMs {
  double forward, backward;
};
template <class Forward, class Backward>
PrefillMs time_prefill(const DeviceClock& clock, int reps, Forward forward, Backward backward) {
  std::vector<double> f, b;
  for (int rep = -1; rep < reps; rep++) {
    const double t0 = clock.now();
    forward();
    const double t1 = clock.now();
    backward();  // needs the forward's tape (KVM) or out and lse (attention): one per forward
    const double t2 = clock.now();
    if (rep >= 0) f.push_back(t1 - t0), b.push_back(t2 - t1);
  }
  return {median(f) * 1e3, median(b) * 1e3};
}

// ms per call of `step(i)` for i < n, all n queued between two waits for the device.
template <class Step>
double time_per_call(const DeviceClock& clock, int n, Step step) {
  const double t0 = clock.now();
  for (int i = 0; i < n; i++) step(i);
  return (clock.now() - t0) / n * 1e3;
}

struct CudaArgs {
  std::vector<int> Ts;
  int reps;
  double budget_s;  // 0: no limit
  std::string out_path;
};

void run_cuda(const CudaArgs& args) {
  const Backend& native = backend_for(Backend::Device::cuda, 0, Backend::Attention::native);
  const Backend& cudnn = backend_for(Backend::Device::cuda, 0, Backend::Attention::cudnn);
  const double start = now();
  const kernels::KvmParams kvm = paper_sqrt16();

  // MFU's yardstick at a size where launches and the host's waits vanish: the trainer's own
  // measurement (bf16 cuBLASLt through the backend table) at 8192 x 8192 x 8192.
  const double gemm_peak = measure_gemm_peak(native, true, 8192, 8192, 8192, 1.0);
  std::printf("B=%d, H=%d, D=%d (width %d), KVM sqrt16 (chunk %d, window %d chunks, %d sink, R %d); forward and "
              "backward: median of %d after a warm-up; decode: ms per token of one sequence at T (KVM: the mean "
              "over the %d tokens up to T)\nbf16 GEMM peak (cuBLASLt, 8192^3): %.1f TFLOP/s\n\n",
              kB, kH, kD, kWidth, kvm.C, kvm.W, kvm.S, kvm.R, args.reps, kDecodeTokens, gemm_peak / 1e12);
  std::printf("%6s  %-16s %11s %11s %11s %7s\n", "T", "layer", "forward ms", "backward ms", "decode ms", "slots");

  // The weights KVM reads (ln_s, the head temperatures) at their initial values.
  std::vector<float> ones(std::max(kD, kH), 1.0f);
  DeviceBuffer ln_w(native, kD), ln_b(native, kD), tau(native, kH), d_ln_w(native, kD), d_ln_b(native, kD),
      d_tau_f(native, kH), d_tau_s(native, kH);
  native.from_host(ln_w.data(), ones.data(), ln_w.bytes());
  native.from_host(tau.data(), ones.data(), tau.bytes());
  // one sequence's decode state, walked on from T to T as the table grows
  kernels::KvmCache kvm_cache(kH, kD, kvm);
  native.kvm_decode_init(kvm_cache, kH, kD);
  DeviceBuffer decode_out(native, kWidth), decode_g(native, kH);
  int decoded = 0;

  enum { kKvm, kCudnn, kNative, kLayers };
  const char* names[kLayers] = {"kvm_sqrt16", "attention_cudnn", "attention_native"};
  double last_s[kLayers] = {}, last_T = 0;  // wall seconds of each layer's last T, warm-up included
  bool dropped[kLayers] = {};
  json::Array rows, skipped;
  Rng rng(1);
  for (int T : args.Ts) {
    if (std::all_of(dropped, dropped + kLayers, [](bool d) { return d; })) break;
    const size_t BT = size_t(kB) * T, N = BT * kWidth;
    // q, k, v rows as the model's projection writes them, (B,T,3*width), random normal
    std::vector<float> host(BT * 3 * kWidth);
    fill_normal(host.data(), host.size(), 1.0f, rng);
    DeviceBuffer qkv(native, host.size());
    native.from_host(qkv.data(), host.data(), qkv.bytes());
    host = {};
    const DeviceClock clock{native, qkv.data()};
    for (int layer = 0; layer < kLayers; layer++) {
      // attention grows as T^2 and KVM sqrt16 as T^1.5: T^2 bounds both
      const double predicted = last_T > 0 ? last_s[layer] * (T / last_T) * (T / last_T) : 0;
      const double left = args.budget_s - (now() - start);
      if (!dropped[layer] && args.budget_s > 0 && predicted > left) {
        dropped[layer] = true;
        std::printf("skipped: %s at T >= %d (predicted %.1f s, %.1f s left of the %.0f s budget)\n", names[layer], T,
                    predicted, left, args.budget_s);
        skipped.emplace_back(json::Object{{"layer", names[layer]}, {"from_T", T}, {"predicted_s", predicted},
                                          {"left_s", left}});
      }
      if (dropped[layer]) continue;
      const double t0 = now();
      json::Object row{{"T", T}, {"layer", names[layer]}};
      if (layer == kKvm) {
        DeviceBuffer q(native, N), k(native, N), v(native, N), g(native, BT * kH), out(native, N), dq(native, N),
            dk(native, N), dv(native, N), dg(native, BT * kH);
        native.split_heads(q.data(), qkv.data(), kB, T, kH, kD, 3 * kWidth);
        native.split_heads(k.data(), qkv.data() + kWidth, kB, T, kH, kD, 3 * kWidth);
        native.split_heads(v.data(), qkv.data() + 2 * kWidth, kB, T, kH, kD, 3 * kWidth);
        native.elu_gate_forward(g.data(), qkv.data(), int(BT * kH));  // the merge gate 1 + elu(x), x normal
        kernels::KvmTape tape;
        const PrefillMs ms = time_prefill(
            clock, args.reps,
            [&] {
              native.kvm_forward(out.data(), tape, q.data(), k.data(), v.data(), g.data(), ln_w.data(), ln_b.data(),
                                 tau.data(), tau.data(), kB, kH, T, kD, kvm);
            },
            [&] {  // dout: any random (B,H,T,D) tensor, here q
              native.kvm_backward(dq.data(), dk.data(), dv.data(), dg.data(), d_ln_w.data(), d_ln_b.data(),
                                  d_tau_f.data(), d_tau_s.data(), q.data(), tape, q.data(), k.data(), v.data(),
                                  g.data(), ln_w.data(), ln_b.data(), tau.data(), tau.data(), kB, kH, T, kD, kvm);
            });
        // decode: batch row 0's tokens, the gate of its first token's heads for every token
        native.elu_gate_forward(decode_g.data(), qkv.data(), kH);
        auto step = [&](int n) {
          const float* x = qkv.data() + size_t(n) * 3 * kWidth;
          native.kvm_decode_step(decode_out.data(), kvm_cache, x, x + kWidth, x + 2 * kWidth, decode_g.data(),
                                 ln_w.data(), ln_b.data(), tau.data(), tau.data(), kvm);
        };
        for (; decoded < T - kDecodeTokens; decoded++) step(decoded);
        const double decode_ms = time_per_call(clock, kDecodeTokens, [&](int i) { step(decoded + i); });
        decoded = T;
        row["forward_ms"] = ms.forward, row["backward_ms"] = ms.backward, row["decode_ms"] = decode_ms;
        row["state_slots"] = tape.slots_after_update().empty() ? 0 : tape.slots_after_update().back();
      } else {
        const Backend& be = layer == kCudnn ? cudnn : native;
        DeviceBuffer out(native, N), lse(native, BT * kH), dqkv(native, 3 * N);
        const PrefillMs ms = time_prefill(
            clock, args.reps, [&] { be.attention_forward(out.data(), lse.data(), qkv.data(), kB, T, kWidth, kH, 0, 0); },
            [&] {  // dout: any random (B,T,width) tensor, here qkv's first B*T*width floats
              be.attention_backward(dqkv.data(), qkv.data(), qkv.data(), out.data(), lse.data(), kB, T, kWidth, kH, 0,
                                    0);
            });
        row["forward_ms"] = ms.forward, row["backward_ms"] = ms.backward, row["decode_ms"] = nullptr;
        if (layer == kNative) {  // one sequence's token T-1 over a cache of T keys (cuDNN has no decode kernel)
          DeviceBuffer k_cache(native, size_t(T) * kWidth), v_cache(native, size_t(T) * kWidth);
          row["decode_ms"] = time_per_call(clock, kDecodeTokens, [&](int) {
            native.attention_decode(decode_out.data(), k_cache.data(), v_cache.data(),
                                    qkv.data() + size_t(T - 1) * 3 * kWidth, 1, kWidth, kH, T - 1, T, 0, 0);
          });
        }
      }
      last_s[layer] = now() - t0;
      auto number = [&](const char* key) { return row[key].is_null() ? NAN : row[key].number(); };
      std::printf("%6d  %-16s %11.3f %11.3f %11.4f %7s\n", T, names[layer], number("forward_ms"),
                  number("backward_ms"), number("decode_ms"),
                  layer == kKvm ? std::to_string(row["state_slots"].integer()).c_str() : "-");
      std::fflush(stdout);
      rows.emplace_back(std::move(row));
    }
    last_T = T;
    // written after every T, so that a run stopped from outside keeps what it measured
    json::Object result{{"bench", "kvm"},  {"device", "cuda"}, {"B", kB},        {"H", kH},
                        {"D", kD},         {"C", kvm.C},       {"W", kvm.W},     {"reps", args.reps},
                        {"decode_tokens", kDecodeTokens},      {"bf16_gemm_peak_flops", gemm_peak},
                        {"budget_s", args.budget_s},           {"seconds", now() - start}};
    result["rows"] = rows;
    result["skipped"] = skipped;
    write_json(args.out_path, result);
  }
  std::printf("wrote %s\n", args.out_path.c_str());
}

constexpr const char* kUsage =
    "usage: kvm_bench [--device cpu|cuda] [--reps R] [--out FILE]\n"
    "                 cpu:  [--max-T N]            T = 1024, 2048, ... N (32768); one thread's layer, R 2\n"
    "                 cuda: [--T T1,T2,...] [--budget-s S]  T list (1024,2048,4096,8192), R 3; S: stop\n"
    "                       starting a layer at a larger T once its predicted time would not fit (0: none)\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "kvm_bench: error: %s\n", message.c_str());
  std::exit(2);
}

// The integer `value` of `flag`, at least `min`.
int parse_int(const std::string& flag, const std::string& value, int min) {
  size_t used = 0;
  int n = 0;
  try {
    n = std::stoi(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != value.size() || n < min)
    usage_error(flag + " expects an integer >= " + std::to_string(min) + ", got '" + value + "'");
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  std::string device = "cpu", out_path;
  int max_T = 32768, reps = 0;
  bool cuda_flags = false, cpu_flags = false;
  CudaArgs cuda{{1024, 2048, 4096, 8192}, 3, 0, ""};
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") return std::printf("%s", kUsage), 0;
    if (i + 1 == argc) usage_error("flag " + a + " needs a value (see --help)");
    const std::string v = argv[i + 1];
    if (a == "--device") {
      if (v != "cpu" && v != "cuda") usage_error("--device expects cpu or cuda, got '" + v + "'");
      device = v;
    } else if (a == "--out") out_path = v;
    else if (a == "--reps") reps = parse_int(a, v, 1);
    else if (a == "--max-T") max_T = parse_int(a, v, 1024), cpu_flags = true;
    else if (a == "--budget-s") cuda.budget_s = parse_int(a, v, 0), cuda_flags = true;
    else if (a == "--T") {
      cuda.Ts.clear(), cuda_flags = true;
      for (size_t at = 0; at <= v.size();) {
        const size_t comma = std::min(v.find(',', at), v.size());
        cuda.Ts.push_back(parse_int(a, v.substr(at, comma - at), kDecodeTokens));
        if (cuda.Ts.size() > 1 && cuda.Ts.back() <= cuda.Ts[cuda.Ts.size() - 2])
          usage_error("--T expects increasing lengths, got '" + v + "'");
        at = comma + 1;
      }
    } else usage_error("unknown flag " + a + " (see --help)");
  }
  if (device == "cpu") {
    if (cuda_flags) usage_error("--T and --budget-s are for --device cuda");
    run_cpu(max_T, reps ? reps : 2, out_path.empty() ? KVMTRAIN_BENCH_RESULTS "/kvm_bench.json" : out_path);
    return 0;
  }
  if (cpu_flags) usage_error("--max-T is for --device cpu (cuda takes --T)");
#ifdef KVMTRAIN_HAS_CUDA
  if (kernels::cuda::device_count() == 0)
    usage_error("--device cuda but no CUDA device is visible (cudaGetDeviceCount found none)");
#else
  usage_error("--device cuda but kvm_bench was built without the CUDA backend (configure with -DKVMTRAIN_CUDA=ON)");
#endif
  if (reps) cuda.reps = reps;
  cuda.out_path = out_path.empty() ? KVMTRAIN_BENCH_RESULTS "/kvm_bench_cuda.json" : out_path;
  run_cuda(cuda);
  return 0;
}
