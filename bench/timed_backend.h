#pragma once
// A copy of the cpu backend table whose every kernel is timed: where a step's time goes, kernel
// by kernel (train_bench --profile). Wall time of each call, summed per kernel; the GEMMs are
// inside matmul_* (and the KVM entry points), which are also summed per shape with their FLOPs,
// so that the GEMMs' rate inside a step can be set against the peak measured on hot operands.
// Host backend only: a cuda launch returns before its kernel ends.
#include <chrono>
#include <map>
#include <string>
#include <tuple>
#include <utility>

#include "kernels/backend.h"

namespace timed_backend {

struct Total {
  double seconds = 0;
  long calls = 0;
  double flops = 0;  // linear layers only: their GEMMs' FLOPs, 2 per multiply-add
};
inline std::map<std::string, Total>& totals() {  // per kernel
  static std::map<std::string, Total> t;
  return t;
}
inline std::map<std::string, Total>& linear_totals() {  // per linear kernel and shape
  static std::map<std::string, Total> t;
  return t;
}

template <auto F>
struct Timed;
template <class R, class... A, R (*F)(A...)>
struct Timed<F> {
  static inline const char* name = "";
  static R call(A... a) {
    struct Record {  // on the way out, also when F throws
      std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
      ~Record() {
        Total& t = totals()[name];
        t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        t.calls++;
      }
    } record;
    return F(std::forward<A>(a)...);
  }
};

// A linear layer's kernel (matmul_forward, matmul_gelu_forward, matmul_backward and their bf16
// twins), timed as Timed<F> and also per shape: the kernel's whole time, with the GELU, the bias
// gradient and the bf16 rounding of its operands that it does besides its GEMMs. kN is the
// position of N among F's parameters (IC and OC follow it); a backward computes dinp's product
// besides dweight's when its first argument, dinp, is given.
template <auto F, size_t kN, bool kBackward>
struct TimedLinear;
template <class... A, void (*F)(A...), size_t kN, bool kBackward>
struct TimedLinear<F, kN, kBackward> {
  static void call(A... a) {
    const auto t0 = std::chrono::steady_clock::now();
    Timed<F>::call(a...);
    const auto args = std::tie(a...);
    const int N = std::get<kN>(args), IC = std::get<kN + 1>(args), OC = std::get<kN + 2>(args);
    int products = 1;
    if constexpr (kBackward) products += std::get<0>(args) != nullptr;
    const std::string shape = std::string(Timed<F>::name) + " " + std::to_string(N) + "x" + std::to_string(IC) +
                              "->" + std::to_string(OC) + (products == 2 ? " +dinp" : "");
    Total& t = linear_totals()[shape];
    t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    t.calls++;
    t.flops += 2.0 * products * N * IC * OC;
  }
};

// The cpu backend's zero and copy, reached through the table (they are not kernels:: functions).
inline void zero(void* p, size_t bytes) { cpu_backend().zero(p, bytes); }
inline void copy(void* dst, const void* src, size_t bytes) { cpu_backend().copy(dst, src, bytes); }

// The cpu table with every kernel, KVM entry point, zero and copy timed.
inline const Backend& cpu() {
  static const Backend timed = [] {
    Backend b = cpu_backend();
    Timed<&zero>::name = "(zero)";
    b.zero = &Timed<&zero>::call;
    Timed<&copy>::name = "(copy)";
    b.copy = &Timed<&copy>::call;
#define KVM_TIMED_ENTRY(ret, fn, params) \
  Timed<&kernels::cpu::fn>::name = #fn;  \
  b.fn = &Timed<&kernels::cpu::fn>::call;
    KVM_KERNELS_ALL_BACKENDS(KVM_TIMED_ENTRY)
    KVM_CORE_KERNELS(KVM_TIMED_ENTRY)
#undef KVM_TIMED_ENTRY
    namespace k = kernels::cpu;
    b.matmul_forward = &TimedLinear<&k::matmul_forward, 4, false>::call;
    b.matmul_forward_bf16 = &TimedLinear<&k::matmul_forward_bf16, 4, false>::call;
    b.matmul_gelu_forward = &TimedLinear<&k::matmul_gelu_forward, 5, false>::call;
    b.matmul_gelu_forward_bf16 = &TimedLinear<&k::matmul_gelu_forward_bf16, 5, false>::call;
    b.matmul_backward = &TimedLinear<&k::matmul_backward, 6, true>::call;
    b.matmul_backward_bf16 = &TimedLinear<&k::matmul_backward_bf16, 6, true>::call;
    return b;
  }();
  return timed;
}

}  // namespace timed_backend
