// Fully connected layer, out = inp @ weight^T + bias with weight (OC,IC) as nn.Linear: the CUDA
// twin of kernels/cpu/matmul.cpp. The GEMMs are cuBLAS sgemm in plain fp32 on the shared handle
// (kernels/cuda/cublas.cu). cuBLAS is column-major: a row-major (R,C) matrix is its transpose
// there, so out^T = W inp^T reads W with op T and inp as is. dbias is deterministic: a 32 x 32
// block owns 32 columns and sums them over the rows in a fixed order.
#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

__global__ void broadcast_rows_kernel(float* out, const float* bias, int N, int OC) {
  size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx < (size_t)N * OC) out[idx] = bias[idx % OC];
}

// dbias[o] += sum_i dout[i, o]; blockDim (32, 32)
__global__ void column_sum_kernel(float* dbias, const float* dout, int N, int OC) {
  __shared__ float part[32][33];
  int o = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.0f;
  if (o < OC)
    for (int i = threadIdx.y; i < N; i += 32) acc += dout[(size_t)i * OC + o];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && o < OC) {
    float t = 0.0f;
    for (int y = 0; y < 32; y++) t += part[y][threadIdx.x];
    dbias[o] += t;
  }
}

}  // namespace

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IC, int OC) {
  // out (N,OC), inp (N,IC), weight (OC,IC), bias (OC) or nullptr; device
  if (N == 0 || OC == 0) return;
  // as on the CPU, the bias rides on beta: out starts as the bias broadcast
  if (bias) {
    broadcast_rows_kernel<<<blocks_for((size_t)N * OC), kThreads>>>(out, bias, N, OC);
    cuda_check(cudaGetLastError());
  }
  const float one = 1.0f, beta = bias ? 1.0f : 0.0f;
  // column-major: out^T (OC,N) = W (as (IC,OC), op T) @ inp^T (IC,N)
  cublas_check(cublasSgemm(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, &one, weight, IC, inp, IC, &beta,
                           out, OC));
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC) {
  // dinp (N,IC) or nullptr, dweight (OC,IC), dbias (OC) or nullptr: accumulated;
  // dout (N,OC), inp (N,IC), weight (OC,IC); device
  if (N == 0 || OC == 0) return;
  const float one = 1.0f;
  cublasHandle_t h = cublas_handle();
  if (dinp)  // dinp += dout @ W; column-major: dinp^T (IC,N) += W^T (IC,OC) @ dout^T (OC,N)
    cublas_check(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, &one, weight, IC, dout, OC, &one, dinp, IC));
  // dweight += dout^T @ inp; column-major: dweight^T (IC,OC) += inp^T (IC,N) @ dout (N,OC)
  cublas_check(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, &one, inp, IC, dout, OC, &one, dweight, IC));
  if (dbias) {
    column_sum_kernel<<<blocks_for(OC, 32), dim3(32, 32)>>>(dbias, dout, N, OC);
    cuda_check(cudaGetLastError());
  }
}

}  // namespace kernels::cuda
