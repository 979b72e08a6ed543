// KVM backward on the GPU (docs/kvm.md section 11), the CUDA twin of kernels/cpu/kvm_backward.cpp:
// the read-outs in reverse order for all B*H heads at once. The state a read-out saw is a sum of
// token contributions, so its gradient (Gk, Gv, Glen per slot) accumulates over every later
// read-out and is handed to a token when the walk passes the update that added it. Routing and the
// append selection are constants from the tape. The states come from the tape's snapshots, or
// from the final states by undoing each update's merges in the order they were added (the sums
// are double, so this reproduces the forward's states). The shared parameters' gradients are
// summed per head first and reduced over the heads in the CPU's fixed order, without atomics.
#include <stdexcept>

#include "kernels/cuda/kvm_internal.cuh"

namespace kernels::cuda {

namespace {

// d_ln_s_weight/bias (D) += sum over heads of part_w/b (BH,D); d_tau (H) += sum over b of part (BH),
// each in the order of cpu::kvm_backward
__global__ void reduce_kernel(float* d_w, float* d_b, float* d_tf, float* d_ts, const float* part_w,
                              const float* part_b, const float* part_tf, const float* part_ts, int B, int H, int D,
                              bool head_temps) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < D) {
    float w = d_w[i], b = d_b[i];
    for (int bh = 0; bh < B * H; bh++) w += part_w[(size_t)bh * D + i], b += part_b[(size_t)bh * D + i];
    d_w[i] = w, d_b[i] = b;
  }
  if (i < H && head_temps) {
    float tf = d_tf[i], ts = d_ts[i];
    for (int b = 0; b < B; b++) tf += part_tf[b * H + i], ts += part_ts[b * H + i];
    d_tf[i] = tf, d_ts[i] = ts;
  }
}

}  // namespace

void kvm_backward(float* dq, float* dk, float* dv, float* dg, float* d_ln_s_weight, float* d_ln_s_bias,
                  float* d_tau_front, float* d_tau_state, const float* dout, const KvmTape& tape, const float* q,
                  const float* k, const float* v, const float* g, const float* ln_s_weight, const float* ln_s_bias,
                  const float* tau_front, const float* tau_state, int B, int H, int T, int D, const KvmParams& p) {
  using namespace kvm;
  const KvmTape::Device* tdp = tape.device.get();
  if (!tdp || tdp->B != B || tdp->H != H || tdp->T != T || tdp->D != D)
    throw std::runtime_error("kvm_backward (cuda): expected the tape of a cuda::kvm_forward with the same B, H, T, D");
  const KvmTape::Device& td = *tdp;
  const Plan pl = plan(T, p);
  int BH = B * H;
  if (BH == 0 || T == 0) return;

  Workspace& ws = workspace();
  size_t slots = (size_t)BH * pl.cap;
  StateView st = ws.state.reserve(BH, pl.cap, D);
  copy_state(st, td.final_state.view(pl.cap), BH, pl.cap, D);
  PreparedView ps = ws.prepared.reserve(BH, pl.cap, D);
  float *Gk = ws.Gk.reserve(slots * D), *Gv = ws.Gv.reserve(slots * D), *Glen = ws.Glen.reserve(slots);
  float *part_w = ws.part_w.reserve((size_t)BH * D), *part_b = ws.part_b.reserve((size_t)BH * D);
  float *part_tf = ws.part_tf.reserve(BH), *part_ts = ws.part_ts.reserve(BH);
  cuda_check(cudaMemsetAsync(Gk, 0, slots * D * sizeof(float)));
  cuda_check(cudaMemsetAsync(Gv, 0, slots * D * sizeof(float)));
  cuda_check(cudaMemsetAsync(Glen, 0, slots * sizeof(float)));
  cuda_check(cudaMemsetAsync(part_w, 0, (size_t)BH * D * sizeof(float)));
  cuda_check(cudaMemsetAsync(part_b, 0, (size_t)BH * D * sizeof(float)));
  cuda_check(cudaMemsetAsync(part_tf, 0, BH * sizeof(float)));
  cuda_check(cudaMemsetAsync(part_ts, 0, BH * sizeof(float)));
  reserve_readout(BH, D, pl.rows, pl.scores, true);
  const float* tf = p.head_temps ? tau_front : nullptr;
  const float* ts = p.head_temps ? tau_state : nullptr;
  const size_t ld = T;
  Routing route{td.kind.get(), td.slot.get(), ld};

  int M = pl.cap, u = (int)pl.m_after.size();  // slots now; updates not yet walked back
  for (int i = (int)pl.steps.size() - 1; i >= 0; i--) {
    const kvm::Step& s = pl.steps[i];
    size_t qo = (size_t)s.qb * D, wo = (size_t)s.wb * D;
    if (s.nwb > s.wb) {  // the update after this read-out: its tokens take the gradient of what came later
      int n = s.nwb - s.wb;
      Routing rc{route.kind + s.wb, route.slot + s.wb, ld};
      Tokens xc{k + wo, v + wo, g + s.wb, ld};
      prepare_keys(xc, BH, n, D, ln_s_weight, ln_s_bias, p);
      tokens_backward({dk + wo, dv + wo, dg + s.wb, ld}, part_w, part_b, Gk, Gv, Glen, pl.cap, rc, xc, BH, n, D,
                      ln_s_weight, p);
      u--;
      M = u > 0 ? pl.m_after[u - 1] : pl.m0;
      if (td.snapshots)
        copy_state(st, td.snapshot(i), BH, M, D);
      else
        undo_merges(st, rc, xc, BH, n, D, p);
    }
    prepare_state(ps, st, BH, 0, M, D, ln_s_weight, ln_s_bias, p, false);
    Readout r{.BH = BH, .H = H, .D = D, .nq = s.qe - s.qb, .q0 = s.qb, .q_ld = ld, .k = k + wo, .v = v + wo,
              .w0 = s.wb, .nw = s.qe - s.wb, .kv_ld = ld, .ps = ps, .M = M, .tau_front = tf, .tau_state = ts};
    readout_backward(dq + qo, dk + wo, dv + wo, part_tf, part_ts, dout + qo, q + qo, r);
    state_backward(Gk, Gv, Glen, part_w, part_b, ws.dK.get(), ws.dV.get(), M + r.nw, st, ps, BH, M, D, ln_s_weight,
                   p);
  }
  if (!pl.steps.empty()) {  // the initial chunk was read by every state read-out
    Tokens x0{k, v, g, ld};
    prepare_keys(x0, BH, pl.m0, D, ln_s_weight, ln_s_bias, p);
    tokens_backward({dk, dv, dg, ld}, part_w, part_b, Gk, Gv, Glen, pl.cap, route, x0, BH, pl.m0, D, ln_s_weight,
                    p);
  }
  readout_backward(dq, dk, dv, part_tf, part_ts, dout, q,
                   {.BH = BH, .H = H, .D = D, .nq = pl.F, .q0 = 0, .q_ld = ld, .k = k, .v = v, .w0 = 0, .nw = pl.F,
                    .kv_ld = ld, .ps = ps, .M = 0, .tau_front = tf, .tau_state = ts});
  launch(reduce_kernel, blocks_for(std::max(D, H)), kThreads, 0, d_ln_s_weight, d_ln_s_bias, d_tau_front, d_tau_state,
         part_w, part_b, part_tf, part_ts, B, H, D, p.head_temps);
}

}  // namespace kernels::cuda
