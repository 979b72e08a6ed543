#pragma once
// How the CUDA twin of matmul (kernels/cuda/matmul.cu) computes a GEMM followed by a bias and/or
// GPT-2's GELU: host rules in plain C++, so that CPU-side tests exercise them.
// cuBLASLt can fuse the bias and the GELU into the GEMM's epilogue, but
//  - kernels it picks for a bias epilogue have been reported to assume a 16-byte aligned bias and
//    to fail with a sticky "misaligned address" (every later CUDA call fails too), and a bias that
//    is a slice of a larger buffer may be only 4-byte aligned;
//  - its heuristic may offer no algorithm for an epilogue with a given type, compute type and
//    shape, and no document lists the combinations it supports.
// So a bias below 16-byte alignment is first copied to an aligned buffer, and when the heuristic
// offers nothing for the fused epilogue the GEMM runs plain and kernels add the bias and apply the
// GELU after it (the same arithmetic in fp32, one more pass over the output).
#include <cstdint>
#include <optional>
#include <vector>

namespace kernels {

constexpr uint32_t kEpilogueBiasAlignment = 16;  // bytes

struct GemmRoute {
  bool fused;      // bias and GELU in the cuBLASLt epilogue; false: a plain GEMM, then kernels
  bool copy_bias;  // fused only: the bias is first copied to a 16-byte aligned buffer
  bool operator==(const GemmRoute&) const = default;
};

// The routes to try, best first. bias_alignment: the largest power of two dividing the bias's
// address (ignored without a bias).
inline std::vector<GemmRoute> gemm_routes(bool bias, bool gelu, uint32_t bias_alignment) {
  std::vector<GemmRoute> routes;
  if (bias || gelu) routes.push_back({true, bias && bias_alignment < kEpilogueBiasAlignment});
  routes.push_back({false, false});
  return routes;
}

// The first route for which `supported(route)` (the heuristic offers an algorithm) is true, or
// nullopt when none is: the caller names the GEMM in its error.
template <class Supported>
std::optional<GemmRoute> first_supported_route(bool bias, bool gelu, uint32_t bias_alignment, Supported supported) {
  for (const GemmRoute& r : gemm_routes(bias, gelu, bias_alignment))
    if (supported(r)) return r;
  return std::nullopt;
}

}  // namespace kernels
