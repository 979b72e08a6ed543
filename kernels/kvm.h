#pragma once
// Key-Value Means (KVM) attention core, as docs/kvm.md describes it (the paper's
// reference code's behaviour). Inputs are per head, AFTER the q/k/v projections, qk-LayerNorm
// and partial RoPE; g is the merge gate AFTER 1+elu. The output is the attention output BEFORE
// the output projection. Heads and batch rows are independent.
//
// Layout: q, k, v, out, dout (B,H,T,D) row-major; g (B,H,T); ln_s weight/bias (D);
// tau_front, tau_state (H). Gradients ACCUMULATE (+=), as every kernel in kernels.h.
#include <cstdint>
#include <memory>
#include <vector>

namespace kernels {

enum class KvmBudget { fixed, power_law, saturating };

// Plain kernel settings (the trainer maps model.kvm.* onto them; kernels never see configs).
struct KvmParams {
  int C = 256;       // chunk length
  int W = 2;         // window chunks: a query chunk sees the previous W-1 chunks and itself
  int S = 1;         // sink slots: never merged into
  int R = 0;         // rotated dims of k: [0,R) are zeroed before ln_s when a key enters the state
  KvmBudget budget = KvmBudget::fixed;
  int min_len = 256;
  double power_f = 16, power_e = 0.5;  // power_law: M* = max(floor(f * ctx^e), min_len)
  int sat_n = 1024;                    // saturating: M* = max(floor(N*ctx/(N+ctx)), min_len)
  int max_slots = 1 << 30;             // Mmax
  bool vlens = true;                   // read value = s_v/|s_v| * |founding value|; false: s_v/count
  bool head_temps = true;              // tau_front / tau_state used (false: treated as 1, grads 0)
  bool merge_gate_keys = true;         // merged keys multiplied by g
  bool merge_gate_values = true;       // merged values multiplied by g
  bool gate_appends = true;            // appended slots take the gated key/value
  bool gate_initial_state = false;     // chunk 0 enters the state gated
  float ln_eps = 1e-5f;
};

// The state size after one update (doc section 9): the schedule's M*, then
// max(min(M*, avail, Mmax), M) so that the state never shrinks.
int kvm_budget(const KvmParams& p, int ctx_len, int avail, int M);

// What a forward pass leaves for its backward: the routing decisions and the final state of
// every (batch, head), plus what is needed to walk the states back (snapshots or reversible
// undo). Opaque; owned by the caller, reused across steps (buffers grow, never shrink).
struct KvmTape {
  KvmTape();
  ~KvmTape();
  KvmTape(KvmTape&&) noexcept;
  KvmTape& operator=(KvmTape&&) noexcept;
  // Final state of (b, h): slots M, s_k (M,D), s_v (M,D), s_len (M).
  int final_slots(int b, int h) const;
  const float* final_s_k(int b, int h) const;
  const float* final_s_v(int b, int h) const;
  const float* final_s_len(int b, int h) const;
  // Slots after each update u (same for every (b, h)).
  const std::vector<int>& slots_after_update() const;
  // Routing of token t of (b, h): 0 never entered the state, 1 initial chunk, 2 appended,
  // 3 merged; and the slot it founded or was merged into (-1 for kind 0).
  int routing_kind(int b, int h, int t) const;
  int routing_slot(int b, int h, int t) const;
  size_t bytes() const;  // memory held for the backward
  // Set before kvm_forward. false (default): the backward walks the states back from the final
  // one by undoing each update (memory O(M*D + T) per head). true: the forward keeps a copy of the
  // state every read-out saw (memory (T/C)*M*D per head); exact, for tests and debugging.
  bool snapshots = false;
  struct Impl;
  std::unique_ptr<Impl> impl;
  // What cuda::kvm_forward keeps on the device (routing, final state, snapshots), made by its
  // first call (kernels/cuda/kvm_internal.cuh). It carries its own deleter, so this header and the
  // CPU path need no CUDA. A tape serves one backend: the accessors above read the host part,
  // which cuda::kvm_tape_to_host fills from this one.
  struct Device;
  std::unique_ptr<Device, void (*)(Device*)> device{nullptr, nullptr};
};

// Token-by-token decode for one sequence (batch 1): state, window (raw k, v, g of at most W*C
// tokens), coverage. kvm_decode_step reproduces kvm_forward's output for position n exactly
// (same schedule, same updates).
struct KvmCache {
  KvmCache(int H, int D, const KvmParams& p);
  ~KvmCache();
  int position() const;  // tokens consumed
  size_t bytes() const;  // memory held
  struct Impl;
  std::unique_ptr<Impl> impl;
  // The device copy of the cache that cuda::kvm_decode_init makes and cuda::kvm_decode_step uses
  // (kernels/cuda/kvm_decode.cu); position() and bytes() describe the host part only.
  struct Device;
  std::unique_ptr<Device, void (*)(Device*)> device{nullptr, nullptr};
};

// The KVM kernels, declared once for both backends (as kernels/kernels.h does): kernels::cpu
// takes host pointers, kernels::cuda device pointers. kvm_backward needs the tape of a
// kvm_forward of the same backend with the same B, H, T, D.
#define KVM_CORE_KERNELS(X)                                                                              \
  X(void, kvm_forward,                                                                                   \
    (float* out /*(B,H,T,D)*/, KvmTape& tape, const float* q /*(B,H,T,D)*/, const float* k /*(B,H,T,D)*/, \
     const float* v /*(B,H,T,D)*/, const float* g /*(B,H,T)*/, const float* ln_s_weight /*(D)*/,          \
     const float* ln_s_bias /*(D)*/, const float* tau_front /*(H)*/, const float* tau_state /*(H)*/, int B, \
     int H, int T, int D, const KvmParams& p))                                                           \
  X(void, kvm_backward,                                                                                  \
    (float* dq /*(B,H,T,D)*/, float* dk /*(B,H,T,D)*/, float* dv /*(B,H,T,D)*/, float* dg /*(B,H,T)*/,      \
     float* d_ln_s_weight /*(D)*/, float* d_ln_s_bias /*(D)*/, float* d_tau_front /*(H)*/,                 \
     float* d_tau_state /*(H)*/, const float* dout /*(B,H,T,D)*/, const KvmTape& tape, const float* q,    \
     const float* k, const float* v, const float* g, const float* ln_s_weight, const float* ln_s_bias,    \
     const float* tau_front, const float* tau_state, int B, int H, int T, int D, const KvmParams& p))     \
  X(void, kvm_decode_step,                                                                               \
    (float* out /*(H,D)*/, KvmCache& cache, const float* q /*(H,D)*/, const float* k /*(H,D)*/,           \
     const float* v /*(H,D)*/, const float* g /*(H)*/, const float* ln_s_weight /*(D)*/,                  \
     const float* ln_s_bias /*(D)*/, const float* tau_front /*(H)*/, const float* tau_state /*(H)*/,      \
     const KvmParams& p))

#define KVM_DECLARE_CORE_KERNEL(ret, name, params) ret name params;

namespace cpu {
KVM_CORE_KERNELS(KVM_DECLARE_CORE_KERNEL)
// cuda::kvm_decode_init's twin: nothing to do, the constructor made the host part.
void kvm_decode_init(KvmCache& cache, int H, int D);
}  // namespace cpu

// The CUDA twins (kernels/cuda/kvm_*.cu): the same semantics, launched on the default stream. The
// schedule, the budget and the gating rules are one code for both backends (kernels/kvm_rules.h),
// and the routing decisions come out the same; only the floating-point summation order differs.
// They share one process-wide scratch, so they must not run from several host threads at once.
namespace cuda {
KVM_CORE_KERNELS(KVM_DECLARE_CORE_KERNEL)

// Copies the device tape of the last cuda::kvm_forward into the host part (routing, final state),
// for the accessors; cpu::kvm_backward can then walk it back too (without snapshots). Synchronous.
void kvm_tape_to_host(KvmTape& tape);

// Gives a cache made with KvmCache(H, D, p) its device storage (the constructor is backend-neutral
// and keeps H and D to the CPU path); call it once, before the first cuda::kvm_decode_step.
void kvm_decode_init(KvmCache& cache, int H, int D);
}  // namespace cuda

}  // namespace kernels
