#pragma once
// A copy of the cpu backend table whose every kernel is timed: where a step's time goes, kernel
// by kernel (train_bench --profile). Wall time of each call, summed per kernel; the GEMMs are
// inside matmul_* (and the KVM entry points). Host backend only: a cuda launch returns before its
// kernel ends.
#include <chrono>
#include <map>
#include <string>
#include <utility>

#include "trainer/backend.h"

namespace timed_backend {

struct Total {
  double seconds = 0;
  long calls = 0;
};
inline std::map<std::string, Total>& totals() {
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
    return b;
  }();
  return timed;
}

}  // namespace timed_backend
