// Fully connected layer, out = inp @ weight^T + bias with weight (OC,IC) as nn.Linear: the CUDA
// twin of kernels/cpu/matmul.cpp, with an fp32 or a bf16 weight. Every GEMM is one cublasLtMatmul
// on the shared handle and workspace (kernels/cuda/cublas.cu):
//  - fp32: fp32 operands and CUBLAS_COMPUTE_32F_PEDANTIC, which rules out TF32 and every other
//    reduced-precision path, so the products match the CPU twin's fp32 GEMM to fp32 rounding;
//  - bf16: inp and dout are first rounded to bf16 (nearest even, kernels/bf16.h) into a scratch
//    buffer, the weight is bf16 already; CUBLAS_COMPUTE_32F accumulates in fp32 into fp32 outputs.
// The forward adds the bias in the GEMM's epilogue (CUBLASLT_EPILOGUE_BIAS), and for the GPT-2
// MLP also applies the GELU there (CUBLASLT_EPILOGUE_GELU_AUX[_BIAS]: D = gelu(x), the auxiliary
// matrix = x, cuBLASLt's GELU being the tanh form GPT-2 uses); the backward GEMMs
// accumulate with beta = 1; dbias is a deterministic column sum of the fp32 dout.
// cuBLASLt is column-major: a row-major (R,C) matrix is its transpose there, a column-major (C,R)
// with leading dimension C. So out^T (OC,N) = W (the stored (IC,OC), op T) @ inp^T (IC,N).
// The descriptors and the heuristic's algorithm are made once per shape and cached; like the rest
// of this backend they assume one host thread drives the device.
#include <cstdint>
#include <map>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

struct Precision {
  cudaDataType_t type;  // of the operands A and B; C, D, the bias and alpha/beta are fp32
  cublasComputeType_t compute;
};
constexpr Precision kFp32{CUDA_R_32F, CUBLAS_COMPUTE_32F_PEDANTIC};
constexpr Precision kBf16{CUDA_R_16BF, CUBLAS_COMPUTE_32F};

// A GEMM operand as stored: column-major (rows, cols), packed (ld = rows), used through op.
struct Operand {
  const void* data;
  cublasOperation_t op;
  int rows, cols;
};

// The largest power of two, at most 256, dividing the address. cuBLASLt's heuristic assumes
// 256-byte aligned operands unless told otherwise, and an algorithm chosen for aligned pointers
// may fail on a tensor that starts inside a buffer, so the alignment is part of the cache key.
uint32_t alignment(const void* p) {
  uintptr_t a = (uintptr_t)p;
  uintptr_t low = a & (~a + 1);  // the lowest set bit; 0 for nullptr
  return low == 0 || low > 256 ? 256u : (uint32_t)low;
}

struct GemmKey {
  cudaDataType_t type;
  cublasComputeType_t compute;
  cublasOperation_t op_a, op_b;
  int a_rows, a_cols, b_rows, b_cols;
  bool bias, gelu;
  uint32_t align_a, align_b, align_d, align_bias, align_aux;
  auto operator<=>(const GemmKey&) const = default;
};

struct GemmPlan {
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a, b, d;  // d is C's layout too: C and D are the same matrix
  cublasLtMatmulAlgo_t algo;
};

GemmPlan make_plan(const GemmKey& k, const float* bias, float* aux) {
  int m = k.op_a == CUBLAS_OP_N ? k.a_rows : k.a_cols;
  int n = k.op_b == CUBLAS_OP_N ? k.b_cols : k.b_rows;
  int inner = k.op_a == CUBLAS_OP_N ? k.a_cols : k.a_rows;
  GemmPlan p{};
  cublaslt_check(cublasLtMatmulDescCreate(&p.desc, k.compute, CUDA_R_32F));
  cublaslt_check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &k.op_a, sizeof(k.op_a)));
  cublaslt_check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &k.op_b, sizeof(k.op_b)));
  // the bias, when there is one, is fp32 like D (cuBLASLt's default bias type) and spans D's m rows
  cublasLtEpilogue_t epilogue = k.gelu ? (k.bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
                                        : (k.bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT);
  cublaslt_check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  if (k.bias)  // the heuristic reads the bias pointer's alignment from here
    cublaslt_check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  if (k.gelu) {  // the auxiliary (pre-GELU) matrix is fp32 like D, with D's leading dimension
    const int64_t ld = m;
    cublaslt_check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
    cublaslt_check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
  }
  cublaslt_check(cublasLtMatrixLayoutCreate(&p.a, k.type, k.a_rows, k.a_cols, k.a_rows));
  cublaslt_check(cublasLtMatrixLayoutCreate(&p.b, k.type, k.b_rows, k.b_cols, k.b_rows));
  cublaslt_check(cublasLtMatrixLayoutCreate(&p.d, CUDA_R_32F, m, n, m));

  cublasLtMatmulPreference_t pref = nullptr;
  cublaslt_check(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t workspace = kCublasLtWorkspaceBytes;
  cublaslt_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                      sizeof(workspace)));
  cublaslt_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &k.align_a,
                                                      sizeof(k.align_a)));
  cublaslt_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &k.align_b,
                                                      sizeof(k.align_b)));
  cublaslt_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &k.align_d,
                                                      sizeof(k.align_d)));
  cublaslt_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &k.align_d,
                                                      sizeof(k.align_d)));
  cublasLtMatmulHeuristicResult_t best{};
  int found = 0;
  cublaslt_check(cublasLtMatmulAlgoGetHeuristic(cublaslt().handle, p.desc, p.a, p.b, p.d, p.d, pref, 1, &best,
                                                &found));
  cublaslt_check(cublasLtMatmulPreferenceDestroy(pref));
  if (found == 0) {
    std::string what = "cublasLtMatmulAlgoGetHeuristic for the GEMM (m " + std::to_string(m) + ", n " +
                       std::to_string(n) + ", k " + std::to_string(inner) +
                       (k.type == CUDA_R_16BF ? ", bf16" : ", fp32") + (k.bias ? ", bias" : "") +
                       (k.gelu ? ", GELU epilogue; its auxiliary leading dimension must be a multiple of 8)" : ")");
    cublaslt_fail(CUBLAS_STATUS_NOT_SUPPORTED, what.c_str(), __FILE__, __LINE__);
  }
  p.algo = best.algo;
  return p;
}

// D (m,n) = op(A) op(B) [+ bias (m), broadcast over the columns] + beta * D; column-major, fp32 D.
// With gelu_aux: gelu_aux = that (beta 0), D = gelu(it).
void gemm(float* D, const Operand& A, const Operand& B, float beta, const float* bias, Precision prec,
          float* gelu_aux = nullptr) {
  static std::map<GemmKey, GemmPlan> plans;  // never freed, like the handle they belong to
  GemmKey key{prec.type, prec.compute, A.op, B.op, A.rows, A.cols, B.rows, B.cols, bias != nullptr,
              gelu_aux != nullptr, alignment(A.data), alignment(B.data), alignment(D), alignment(bias),
              alignment(gelu_aux)};
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, make_plan(key, bias, gelu_aux)).first;
  const GemmPlan& p = it->second;
  // the cached descriptor holds the previous call's pointers
  if (bias)
    cublaslt_check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  if (gelu_aux)
    cublaslt_check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &gelu_aux,
                                                  sizeof(gelu_aux)));
  const float alpha = 1.0f;
  const CublasLt& lt = cublaslt();
  cublaslt_check(cublasLtMatmul(lt.handle, p.desc, &alpha, A.data, p.a, B.data, p.b, &beta, D, p.d, D, p.d, &p.algo,
                                lt.workspace, kCublasLtWorkspaceBytes, 0));
}

// out (N,OC) = inp (N,IC) @ weight (OC,IC)^T + bias; column-major: out^T (OC,N) = W (IC,OC)^T @ inp^T (IC,N).
// With pre: pre = that, out = gelu(pre).
void forward_gemm(float* out, const void* inp, const void* weight, const float* bias, int N, int IC, int OC,
                  Precision prec, float* pre = nullptr) {
  gemm(out, {weight, CUBLAS_OP_T, IC, OC}, {inp, CUBLAS_OP_N, IC, N}, 0.0f, bias, prec, pre);
}

// dinp (N,IC) or nullptr, dweight (OC,IC): accumulated, or overwritten (beta 0, their old contents
// never read); dout (N,OC), inp (N,IC), weight (OC,IC)
void backward_gemms(float* dinp, float* dweight, const void* dout, const void* inp, const void* weight, int N,
                    int IC, int OC, Precision prec, bool accumulate_dinp, bool accumulate_dweight) {
  if (dinp)  // dinp (+)= dout @ W; column-major: dinp^T (IC,N) (+)= W^T (IC,OC) @ dout^T (OC,N)
    gemm(dinp, {weight, CUBLAS_OP_N, IC, OC}, {dout, CUBLAS_OP_N, OC, N}, accumulate_dinp ? 1.0f : 0.0f, nullptr, prec);
  // dweight (+)= dout^T @ inp; column-major: dweight^T (IC,OC) (+)= inp^T (IC,N) @ (dout^T (OC,N))^T
  gemm(dweight, {inp, CUBLAS_OP_N, IC, N}, {dout, CUBLAS_OP_T, OC, N}, accumulate_dweight ? 1.0f : 0.0f, nullptr,
       prec);
}

// dbias[o] += sum_i dout[i, o]; blockDim (32, 32)
__global__ void bias_backward_kernel(float* dbias, const float* dout, int N, int OC) {
  column_sums<1>({dbias}, N, OC, [=](int i, int o, float* acc) { acc[0] += dout[(size_t)i * OC + o]; });
}

void bias_backward(float* dbias, const float* dout, int N, int OC, bool accumulate) {
  if (!accumulate) cuda_check(cudaMemsetAsync(dbias, 0, (size_t)OC * sizeof(float)));
  bias_backward_kernel<<<blocks_for(OC, 32), dim3(32, 32)>>>(dbias, dout, N, OC);
  cuda_check(cudaGetLastError());
}

__global__ void round_nearest_kernel(bf16* out, const float* inp, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = bf16_round_nearest(inp[i]);
}

// out (n) = inp (n) rounded to bf16, nearest even
void round_nearest(bf16* out, const float* inp, size_t n) {
  round_nearest_kernel<<<blocks_for(n), kThreads>>>(out, inp, n);
  cuda_check(cudaGetLastError());
}

// No rows or no outputs: nothing to add, but gradients to overwrite are zeros (the CPU twin's
// empty GEMM).
bool empty_product(int N, int OC, int IC, float* dinp, float* dweight, float* dbias, bool accumulate_dinp,
                   bool accumulate_dweight) {
  if (N != 0 && OC != 0) return false;
  if (dinp && !accumulate_dinp) cuda_check(cudaMemsetAsync(dinp, 0, (size_t)N * IC * sizeof(float)));
  if (!accumulate_dweight) {
    cuda_check(cudaMemsetAsync(dweight, 0, (size_t)OC * IC * sizeof(float)));
    if (dbias) cuda_check(cudaMemsetAsync(dbias, 0, (size_t)OC * sizeof(float)));
  }
  return true;
}

// The bf16 copies of inp and dout live in one device buffer for the process, grown to the largest
// request (the first training step reaches it) and never shrunk.
bf16* bf16_scratch(size_t n) {
  static bf16* buf = nullptr;
  static size_t capacity = 0;
  if (n > capacity) {
    cuda_check(cudaDeviceSynchronize());  // GEMMs still queued may read the old buffer
    cuda_check(cudaFree(buf));
    buf = nullptr;
    capacity = 0;
    cuda_check(cudaMalloc(&buf, n * sizeof(bf16)));
    capacity = n;
  }
  return buf;
}

}  // namespace

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IC, int OC) {
  // out (N,OC), inp (N,IC), weight (OC,IC), bias (OC) or nullptr; device
  if (N == 0 || OC == 0) return;
  forward_gemm(out, inp, weight, bias, N, IC, OC, kFp32);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC, bool accumulate_dinp, bool accumulate_dweight) {
  // dinp (N,IC) or nullptr, dweight (OC,IC), dbias (OC) or nullptr: accumulated or overwritten;
  // dout (N,OC), inp (N,IC), weight (OC,IC); device
  if (empty_product(N, OC, IC, dinp, dweight, dbias, accumulate_dinp, accumulate_dweight)) return;
  backward_gemms(dinp, dweight, dout, inp, weight, N, IC, OC, kFp32, accumulate_dinp, accumulate_dweight);
  if (dbias) bias_backward(dbias, dout, N, OC, accumulate_dweight);
}

void matmul_forward_bf16(float* out, const float* inp, const bf16* weight, const float* bias, int N, int IC, int OC) {
  // out (N,OC), inp (N,IC), weight (OC,IC) bf16, bias (OC) or nullptr; device
  matmul_gelu_forward_bf16(out, nullptr, inp, weight, bias, N, IC, OC);
}

void matmul_gelu_forward(float* out, float* pre, const float* inp, const float* weight, const float* bias, int N,
                         int IC, int OC) {
  // out, pre (N,OC), inp (N,IC), weight (OC,IC), bias (OC) or nullptr; device
  if (N == 0 || OC == 0) return;
  forward_gemm(out, inp, weight, bias, N, IC, OC, kFp32, pre);
}

// pre == nullptr: matmul_forward_bf16 (no GELU)
void matmul_gelu_forward_bf16(float* out, float* pre, const float* inp, const bf16* weight, const float* bias, int N,
                              int IC, int OC) {
  // out, pre (N,OC) or pre nullptr, inp (N,IC), weight (OC,IC) bf16, bias (OC) or nullptr; device
  if (N == 0 || OC == 0) return;
  size_t n_inp = (size_t)N * IC;
  bf16* inp16 = bf16_scratch(n_inp);  // (N,IC)
  round_nearest(inp16, inp, n_inp);
  forward_gemm(out, inp16, weight, bias, N, IC, OC, kBf16, pre);
}

void matmul_backward_bf16(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                          const bf16* weight, int N, int IC, int OC, bool accumulate_dinp, bool accumulate_dweight) {
  // dinp (N,IC) or nullptr, dweight (OC,IC), dbias (OC) or nullptr: accumulated or overwritten
  // (fp32); dout (N,OC), inp (N,IC), weight (OC,IC) bf16; device
  if (empty_product(N, OC, IC, dinp, dweight, dbias, accumulate_dinp, accumulate_dweight)) return;
  size_t n_dout = (size_t)N * OC, n_inp = (size_t)N * IC;
  size_t inp_at = (n_dout + 127) / 128 * 128;  // keeps the inp copy 256-byte aligned, as the fastest GEMMs want
  bf16* dout16 = bf16_scratch(inp_at + n_inp);  // (N,OC)
  bf16* inp16 = dout16 + inp_at;                // (N,IC)
  round_nearest(dout16, dout, n_dout);
  round_nearest(inp16, inp, n_inp);
  backward_gemms(dinp, dweight, dout16, inp16, weight, N, IC, OC, kBf16, accumulate_dinp, accumulate_dweight);
  if (dbias) bias_backward(dbias, dout, N, OC, accumulate_dweight);  // the fp32 dout, as the CPU twin
}

}  // namespace kernels::cuda
