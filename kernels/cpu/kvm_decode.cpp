// KVM decode, one token at a time (docs/kvm.md section 10). Per head the cache keeps the state, its
// prepared read-out form, and the raw k, v, g of the window [w0, n]. Token n: the first C tokens
// are copied into the initial state; when n starts a new chunk and the window's first chunk leaves
// it, that chunk is folded in with the prefill's update and the prefill's (ctx_len, avail); the
// read-out uses the state once the window has moved (n >= W*C). Same code as kvm_forward, so the
// states and the routing are identical and only the read-out's GEMM summation order differs.
#include "kernels/cpu/kvm_internal.h"

namespace kernels {

struct KvmCache::Impl {
  int H, D;
  int n = 0;   // tokens consumed
  int w0 = 0;  // position of the first window row
  struct Head {
    kvm::State st;
    cpu::kvm::Prepared ps;    // of st, refreshed when st changes
    bool stale = true;        // ps no longer matches st
    std::vector<float> k, v;  // (n - w0, D) window rows
    std::vector<float> g;     // (n - w0)
  };
  std::vector<Head> heads;
  std::vector<int8_t> kind;  // (C) routing of a folded chunk: decode has no tape, so it is dropped
  std::vector<int> slot;     // (C)
  cpu::kvm::ReadoutScratch sc;
};

KvmCache::KvmCache(int H, int D, const KvmParams& p) : impl(std::make_unique<Impl>()) {
  kvm::check_params(p, D);
  impl->H = H, impl->D = D;
  impl->heads.resize(H);
  impl->kind.resize(p.C);
  impl->slot.resize(p.C);
}
KvmCache::~KvmCache() = default;

int KvmCache::position() const { return impl->n; }

size_t KvmCache::bytes() const {
  size_t n = 0;
  for (const auto& hd : impl->heads)
    n += hd.st.bytes() + (hd.k.size() + hd.v.size() + hd.g.size()) * sizeof(float);
  return n;
}

namespace cpu {

void kvm_decode_init(KvmCache&, int, int) {}

void kvm_decode_step(float* out, KvmCache& cache, const float* q, const float* k, const float* v, const float* g,
                     const float* ln_s_weight, const float* ln_s_bias, const float* tau_front, const float* tau_state,
                     const KvmParams& p) {
  using namespace kvm;
  KvmCache::Impl& c = *cache.impl;
  int D = c.D, n = c.n;
  int wb = bswa_begin(n / p.C * p.C + p.C, p);  // window of the chunk that holds n
  static const Prepared none;                    // no state yet: plain causal attention
  for (int h = 0; h < c.H; h++) {
    KvmCache::Impl::Head& hd = c.heads[h];
    const float *qh = q + (size_t)h * D, *kh = k + (size_t)h * D, *vh = v + (size_t)h * D;
    hd.k.insert(hd.k.end(), kh, kh + D);
    hd.v.insert(hd.v.end(), vh, vh + D);
    hd.g.push_back(g[h]);
    if (n < p.C) {
      add_initial(hd.st, kh, vh, g + h, 1, D, ln_s_weight, ln_s_bias, p);
      hd.stale = true;
    }
    if (wb > c.w0) {  // the window's first chunk leaves; chunk 0 is in the state already
      int nl = wb - c.w0;
      if (c.w0 > 0) {
        update(hd.st, c.kind.data(), c.slot.data(), hd.k.data(), hd.v.data(), hd.g.data(), nl, n, wb, D, ln_s_weight,
               ln_s_bias, p);
        hd.stale = true;
      }
      hd.k.erase(hd.k.begin(), hd.k.begin() + (size_t)nl * D);
      hd.v.erase(hd.v.begin(), hd.v.begin() + (size_t)nl * D);
      hd.g.erase(hd.g.begin(), hd.g.begin() + nl);
    }
    if (wb > 0 && hd.stale) {
      prepare_state(hd.ps, hd.st, D, ln_s_weight, ln_s_bias, p);
      hd.stale = false;
    }
    float tf = p.head_temps ? tau_front[h] : 1.0f, ts = p.head_temps ? tau_state[h] : 1.0f;
    readout_forward(out + (size_t)h * D, qh, 1, n, hd.k.data(), hd.v.data(), wb, n - wb + 1, wb > 0 ? hd.ps : none,
                    tf, ts, D, c.sc);
  }
  c.w0 = wb;
  c.n = n + 1;
}

}  // namespace cpu
}  // namespace kernels
