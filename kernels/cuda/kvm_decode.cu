// KVM decode on the GPU, one token at a time (docs/kvm.md section 10), the CUDA twin of
// kernels/cpu/kvm_decode.cpp. The cache's device part keeps, for all H heads, the states, their
// prepared read-out form, and the raw k, v, g of the window [w0, n]. Token n: the first C tokens
// are copied into the initial state; when n starts a new chunk and the window's first chunk leaves
// it, that chunk is folded in with the prefill's update and the prefill's (ctx_len, avail); the
// read-out uses the state once the window has moved (n >= W*C). The same launchers as
// cuda::kvm_forward, so decode reproduces prefill by construction.
#include <stdexcept>

#include "kernels/cuda/kvm_internal.cuh"

struct kernels::KvmCache::Device {
  int H, D;
  int n = 0;    // tokens consumed
  int w0 = 0;   // position of the first window row
  int M = 0;    // slots of every head's state
  int cap = 0;  // slots the arrays hold
  bool stale = true;  // ps no longer matches st
  cuda::kvm::StateArrays st;     // (H,cap,...)
  cuda::kvm::PreparedArrays ps;  // (H,cap,...)
  // window rows [w0, n] of k, v (H,W*C+1,D) and g (H,W*C+1); a second set to shift them into when
  // a chunk leaves (cudaMemcpy2D may not overlap)
  cuda::DeviceArray<float> k[2], v[2], g[2];
  int cur = 0;
  cuda::DeviceArray<int8_t> kind;  // (H,C) routing of a folded chunk: decode has no tape, so it is dropped
  cuda::DeviceArray<int> slot;     // (H,C)
};

namespace kernels::cuda {

namespace {

// Room for `need` slots per head, keeping the M held; the prepared form is rebuilt before its next use.
void grow_state(KvmCache::Device& c, int need, const KvmParams& p) {
  using namespace kvm;
  if (need <= c.cap) return;
  int cap = std::max(need, 2 * c.cap);
  StateArrays bigger;
  copy_state(bigger.reserve(c.H, cap, c.D), c.st.view(c.cap), c.H, c.M, c.D);
  c.st.swap(bigger);
  c.ps.reserve(c.H, cap, c.D);
  c.cap = cap, c.stale = true;
  // the largest read-out (every slot and a full window) and routing (a chunk against every slot)
  size_t rows = (size_t)cap + p.W * p.C;
  reserve_readout(c.H, c.D, rows, std::max(rows, (size_t)p.C * cap), false);
}

}  // namespace

void kvm_decode_init(KvmCache& cache, int H, int D) {
  auto* c = new KvmCache::Device;
  c->H = H, c->D = D;
  cache.device = {c, [](KvmCache::Device* d) { delete d; }};
}

void kvm_decode_step(float* out, KvmCache& cache, const float* q, const float* k, const float* v, const float* g,
                     const float* ln_s_weight, const float* ln_s_bias, const float* tau_front, const float* tau_state,
                     const KvmParams& p) {
  using namespace kvm;
  if (!cache.device) throw std::runtime_error("kvm_decode_step (cuda): expected a cache set up by kvm_decode_init");
  KvmCache::Device& c = *cache.device;
  int H = c.H, D = c.D, n = c.n;
  int wb = kvm::bswa_begin(n / p.C * p.C + p.C, p);  // window of the chunk that holds n
  size_t wcap = (size_t)p.W * p.C + 1, pitch = wcap * D * sizeof(float);
  for (int i = 0; i < 2; i++) c.k[i].reserve(H * wcap * D), c.v[i].reserve(H * wcap * D), c.g[i].reserve(H * wcap);
  grow_state(c, c.M + p.C, p);  // an update adds at most C slots
  StateView st = c.st.view(c.cap);
  PreparedView ps{c.ps.ks.get(), c.ps.vs.get(), c.ps.mean.get(), c.ps.rstd.get(), c.cap};

  // token n becomes window row n - w0
  size_t row = n - c.w0;
  float *wk = c.k[c.cur].get(), *wv = c.v[c.cur].get(), *wg = c.g[c.cur].get();
  cuda_check(cudaMemcpy2DAsync(wk + row * D, pitch, k, D * sizeof(float), D * sizeof(float), H,
                               cudaMemcpyDeviceToDevice));
  cuda_check(cudaMemcpy2DAsync(wv + row * D, pitch, v, D * sizeof(float), D * sizeof(float), H,
                               cudaMemcpyDeviceToDevice));
  cuda_check(cudaMemcpy2DAsync(wg + row, wcap * sizeof(float), g, sizeof(float), sizeof(float), H,
                               cudaMemcpyDeviceToDevice));
  if (n < p.C) {
    add_initial(st, {nullptr, nullptr, 0}, {wk + row * D, wv + row * D, wg + row, wcap}, H, 1, c.M, D, ln_s_weight,
                ln_s_bias, p);
    c.M++, c.stale = true;
  }
  if (wb > c.w0) {  // the window's first chunk leaves; chunk 0 is in the state already
    int nl = wb - c.w0;
    if (c.w0 > 0) {
      Routing rc{c.kind.reserve((size_t)H * p.C), c.slot.reserve((size_t)H * p.C), (size_t)p.C};
      c.M = update(st, ps, rc, {wk, wv, wg, wcap}, H, nl, c.M, n, wb, D, ln_s_weight, ln_s_bias, p);
      c.stale = true;
    }
    size_t keep = row + 1 - nl;  // rows [nl, row] become rows [0, keep) of the other set
    int o = 1 - c.cur;
    cuda_check(cudaMemcpy2DAsync(c.k[o].get(), pitch, wk + (size_t)nl * D, pitch, keep * D * sizeof(float), H,
                                 cudaMemcpyDeviceToDevice));
    cuda_check(cudaMemcpy2DAsync(c.v[o].get(), pitch, wv + (size_t)nl * D, pitch, keep * D * sizeof(float), H,
                                 cudaMemcpyDeviceToDevice));
    cuda_check(cudaMemcpy2DAsync(c.g[o].get(), wcap * sizeof(float), wg + nl, wcap * sizeof(float),
                                 keep * sizeof(float), H, cudaMemcpyDeviceToDevice));
    c.cur = o;
    wk = c.k[o].get(), wv = c.v[o].get();
  }
  if (wb > 0 && c.stale) {
    prepare_state(ps, st, H, 0, c.M, D, ln_s_weight, ln_s_bias, p, false);
    c.stale = false;
  }
  readout_forward(out, q,
                  {.BH = H, .H = H, .D = D, .nq = 1, .q0 = n, .q_ld = 1, .k = wk, .v = wv, .w0 = wb, .nw = n - wb + 1,
                   .kv_ld = wcap, .ps = ps, .M = wb > 0 ? c.M : 0, .tau_front = p.head_temps ? tau_front : nullptr,
                   .tau_state = p.head_temps ? tau_state : nullptr});
  c.w0 = wb;
  c.n = n + 1;
}

}  // namespace kernels::cuda
