// The optimizer step and the gradient norm that clipping needs, each one pass over memory.
#include <cmath>

#include "kernels/kernels.h"

namespace kernels::cpu {

void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, float grad_scale, int t) {
  // params, grads, m, v: (n)
  float bias1 = 1.0f - std::pow(beta1, (float)t);
  float bias2 = 1.0f - std::pow(beta2, (float)t);
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; i++) {
    float g = grads[i] * grad_scale;
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] -= lr * ((mi / bias1) / (std::sqrt(vi / bias2) + eps) + weight_decay * params[i]);
  }
}

double global_norm_squared(const float* g, const IndexRange* ranges, int count) {
  // double because a sum of ~1e8 squares in float loses the small ones entirely
  double total = 0.0;
  for (int r = 0; r < count; r++) {
    const size_t begin = ranges[r].begin, end = ranges[r].end;
    double sum = 0.0;
#pragma omp parallel for simd schedule(static) reduction(+ : sum)
    for (size_t i = begin; i < end; i++) sum += (double)g[i] * g[i];
    total += sum;
  }
  return total;
}

}  // namespace kernels::cpu
