#include "kernels/onednn_gemm.h"

#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>

namespace kernels::onednn {

namespace {

using dt = dnnl::memory::data_type;

dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

struct Key {
  Operands t;
  bool trans_a, trans_b, bias, accumulate;
  int M, N, K;
  auto tie() const { return std::tie(t, trans_a, trans_b, bias, accumulate, M, N, K); }
  bool operator<(const Key& o) const { return tie() < o.tie(); }
};

struct Gemm {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul prim;
};

// Creating a primitive costs milliseconds (it JIT-compiles the kernel); a training run has a
// handful of shapes, so each is made once.
const Gemm& cached_gemm(const Key& k) {
  static std::mutex mu;
  static std::map<Key, Gemm> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(k);
  if (it != cache.end()) return it->second;
  const dt ab = k.t == Operands::bf16 ? dt::bf16 : dt::f32;
  using dims = dnnl::memory::dims;
  dnnl::memory::desc a({k.M, k.K}, ab, k.trans_a ? dims{1, k.M} : dims{k.K, 1});
  dnnl::memory::desc b({k.K, k.N}, ab, k.trans_b ? dims{1, k.K} : dims{k.N, 1});
  dnnl::memory::desc c({k.M, k.N}, dt::f32, dims{k.N, 1});
  dnnl::primitive_attr attr;
  if (k.accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  try {
    auto desc = k.bias ? dnnl::matmul::desc(a, b, dnnl::memory::desc({1, k.N}, dt::f32, dims{k.N, 1}), c)
                       : dnnl::matmul::desc(a, b, c);
    dnnl::matmul::primitive_desc pd(desc, attr, cpu_engine());
    return cache.emplace(k, Gemm{pd, dnnl::matmul(pd)}).first->second;
  } catch (const dnnl::error& e) {
    throw std::runtime_error("oneDNN matmul " + std::to_string(k.M) + "x" + std::to_string(k.N) + "x" +
                             std::to_string(k.K) + ": " + e.what() + " (is libdnnl-dev 2.x installed? launch/setup.sh)");
  }
}

// oneDNN has two fp32 GEMMs: the matmul primitive (its brgemm kernels) and dnnl_sgemm (its
// MKL-style jit GEMM), and neither wins every layout. Measured on GPT-2 124M's products at 1024
// and 256 rows, 2 threads (docs/perf-notebook.md): brgemm is 20-40% slower than dnnl_sgemm whenever B
// is stored (K,N) — the backward's dinp = dout @ W, worst for the tied embedding's K = 50304 —
// and for the weight gradient dout^T @ inp when the output is square or wide, or very tall (the
// embedding); it is faster for the forward's inp @ W^T and for the tall qkv and MLP gradients. The
// choice depends on the shape only, so a run and its resumption round identically.
bool use_jit_sgemm(bool trans_a, bool trans_b, int M, int N) {
  if (!trans_a && !trans_b) return true;
  if (trans_a && !trans_b) return M <= N || M >= 16 * N;
  return false;
}

}  // namespace

void gemm(Operands t, bool trans_a, bool trans_b, int M, int N, int K, const void* A, const void* B,
          const float* bias, float* C, bool accumulate) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // oneDNN rejects empty reductions; the product is zero
    if (!accumulate)
      for (size_t i = 0; i < (size_t)M * N; i++) C[i] = bias ? bias[i % N] : 0.0f;
    return;
  }
  if (t == Operands::f32 && !bias && use_jit_sgemm(trans_a, trans_b, M, N)) {
    const dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, 1.0f, static_cast<const float*>(A),
                                        trans_a ? M : K, static_cast<const float*>(B), trans_b ? K : N,
                                        accumulate ? 1.0f : 0.0f, C, N);
    if (st != dnnl_success)
      throw std::runtime_error("dnnl_sgemm " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) +
                               " failed with status " + std::to_string(int(st)));
    return;
  }
  const Gemm& g = cached_gemm(Key{t, trans_a, trans_b, bias != nullptr, accumulate, M, N, K});
  dnnl::engine& eng = cpu_engine();
  // A stream per call: streams are cheap, and a shared one would serialise callers for nothing.
  dnnl::stream s(eng);
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, dnnl::memory(g.pd.src_desc(), eng, const_cast<void*>(A))},
      {DNNL_ARG_WEIGHTS, dnnl::memory(g.pd.weights_desc(), eng, const_cast<void*>(B))},
      {DNNL_ARG_DST, dnnl::memory(g.pd.dst_desc(), eng, C)}};
  if (bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(g.pd.bias_desc(), eng, const_cast<float*>(bias)));
  g.prim.execute(s, args);
  s.wait();
}

}  // namespace kernels::onednn
