#pragma once
// Device-side helpers shared by the CUDA kernels (not a kernel twin): launch sizes, warp, block and
// column reductions, the row LayerNorm of layernorm.cu and head_layernorm.cu. cuda_check,
// cublas_check, cublaslt_check and the shared cuBLAS(Lt) handles come with it.
#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda/cuda_check.cuh"

namespace kernels::cuda {

constexpr int kThreads = 256;  // default block size of the elementwise kernels

inline unsigned blocks_for(size_t n, int threads = kThreads) {
  return (unsigned)((n + threads - 1) / threads);
}

// kernel<<<grid, block, shared_bytes>>>(args...), checked. A grid with no blocks (a zero size: no
// rows, no columns) launches nothing: CUDA would refuse it as an invalid configuration, and every
// kernel's grid spans what it writes, so there is nothing to write.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  kernel<<<grid, block, shared_bytes>>>(args...);
  cuda_check(cudaGetLastError());
}

// Device memory that grows on request and never shrinks; growing drops the contents. It is
// allocated and freed in the default stream's order (cudaMallocAsync, cudaFreeAsync), so growing
// never waits for the device: kernels already queued there finish with the old memory before it
// is released, and collectives in flight on a communication stream are not waited for (cudaFree
// and cudaDeviceSynchronize would wait for them, mid-backward). Hence it is for default-stream
// work only. Owned by a tape, a cache, a workspace or a scratch buffer.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() {
    if (p_) cudaFreeAsync(p_, 0);  // unchecked: may run at exit, after the runtime's teardown
  }
  T* reserve(size_t n) {
    if (n > n_) {
      if (p_) cuda_check(cudaFreeAsync(p_, 0));
      p_ = nullptr, n_ = 0;
      void* p = nullptr;
      cuda_check(cudaMallocAsync(&p, n * sizeof(T), 0));
      p_ = static_cast<T*>(p), n_ = n;
    }
    return p_;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  void swap(DeviceArray& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

template <class T>
__device__ inline T warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ inline float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Sum over a block whose size is a multiple of 32 (at most 1024); every thread gets the result.
// `shared` holds at least 32 T. Deterministic: a fixed tree for a fixed block size.
template <class T>
__device__ inline T block_sum(T v, T* shared) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < nwarps ? shared[lane] : T(0);
  return warp_sum(v);
}

__device__ inline float block_max(float v, float* shared) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < nwarps ? shared[lane] : -INFINITY;
  return warp_max(v);
}

// Sums over the rows of a (rows, cols) grid of terms, column by column, without atomics: out[k][col]
// += sum_row term(row, col)[k] for K outputs. Call it from a kernel launched as
// <<<blocks_for(cols, 32), dim3(32, 32)>>>: thread (x, y) accumulates rows y, y+32, ... of column
// blockIdx.x*32 + x (a warp reads 32 adjacent columns of one row), then the 32 partial sums of a
// column meet in shared memory and are added in a fixed order, so the result is the same every run.
// term(row, col, acc) adds its K contributions to acc[0..K).
template <int K, class Term>
__device__ inline void column_sums(float* const (&out)[K], int rows, int cols, Term term) {
  __shared__ float part[K][32][33];  // 33: the transposed reads below hit distinct banks
  int col = blockIdx.x * 32 + threadIdx.x;
  float acc[K] = {};
  if (col < cols)
    for (int row = threadIdx.y; row < rows; row += 32) term(row, col, acc);
#pragma unroll
  for (int k = 0; k < K; k++) part[k][threadIdx.y][threadIdx.x] = acc[k];
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
#pragma unroll
    for (int k = 0; k < K; k++) {
      float total = 0.0f;
      for (int y = 0; y < 32; y++) total += part[k][y][threadIdx.x];
      out[k][col] += total;
    }
  }
}

// LayerNorm of one row of C floats by one warp (every lane calls it), eps 1e-5, biased variance,
// two-pass statistics in fp32 (E[x^2] - mean^2 cancels badly for rows far from zero mean):
// o = (x - mean) * rstd * weight + bias. o may equal x: a lane writes only the columns it alone
// reads, and only after the warp-wide sums. Returns the row's mean and rstd to every lane.
struct RowStats {
  float mean, rstd;
};

__device__ inline RowStats warp_layernorm_forward(float* o, const float* x, const float* weight, const float* bias,
                                                  int C) {
  int lane = threadIdx.x % 32;
  float sum = 0.0f;
  for (int c = lane; c < C; c += 32) sum += x[c];
  float m = warp_sum(sum) / C;
  float sq = 0.0f;
  for (int c = lane; c < C; c += 32) {
    float d = x[c] - m;
    sq += d * d;
  }
  float s = 1.0f / sqrtf(warp_sum(sq) / C + 1e-5f);
  for (int c = lane; c < C; c += 32) o[c] = (x[c] - m) * s * weight[c] + bias[c];
  return {m, s};
}

// The input gradient of warp_layernorm_forward for one row, by one warp: with dnorm = d * weight,
// di += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)).
__device__ inline void warp_layernorm_backward(float* di, const float* d, const float* x, const float* weight,
                                               RowStats st, int C) {
  int lane = threadIdx.x % 32;
  float m = st.mean, s = st.rstd;
  float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
  for (int c = lane; c < C; c += 32) {
    float dnorm = d[c] * weight[c];
    dnorm_mean += dnorm;
    dnorm_norm_mean += dnorm * (x[c] - m) * s;
  }
  dnorm_mean = warp_sum(dnorm_mean) / C;
  dnorm_norm_mean = warp_sum(dnorm_norm_mean) / C;
  for (int c = lane; c < C; c += 32) di[c] += (d[c] * weight[c] - dnorm_mean - (x[c] - m) * s * dnorm_norm_mean) * s;
}

}  // namespace kernels::cuda
