// Fully connected layer, out = inp @ weight^T + bias with weight (OC,IC) as nn.Linear: the CUDA
// twin of kernels/cpu/matmul.cpp, with an fp32 or a bf16 weight. Every GEMM is one cublasLtMatmul
// on the shared handle and workspace (kernels/cuda/cublas.cu):
//  - fp32: fp32 operands and CUBLAS_COMPUTE_32F, which with fp32 operands never rounds to TF32 or
//    any other reduced precision (that takes CUBLAS_COMPUTE_32F_FAST_*), so the products match the
//    CPU twin's fp32 GEMM to fp32 rounding. (Not the _PEDANTIC compute type: no document says
//    cuBLASLt pairs it with the bias and GELU epilogues.)
//  - bf16: inp and dout are first rounded to bf16 (nearest even, kernels/bf16.h) into a scratch
//    buffer, the weight is bf16 already; CUBLAS_COMPUTE_32F accumulates in fp32 into fp32 outputs.
// The forward adds the bias in the GEMM's epilogue (CUBLASLT_EPILOGUE_BIAS), and for the GPT-2
// MLP also applies the GELU there (CUBLASLT_EPILOGUE_GELU_AUX[_BIAS]: D = gelu(x), the auxiliary
// matrix = x, cuBLASLt's GELU being the tanh form GPT-2 uses); kernels/gemm_route.h says when it
// copies the bias first or falls back to kernels after a plain GEMM. The backward GEMMs
// accumulate with beta = 1; dbias is a deterministic column sum of the fp32 dout.
// cuBLASLt is column-major: a row-major (R,C) matrix is its transpose there, a column-major (C,R)
// with leading dimension C. So out^T (OC,N) = W (the stored (IC,OC), op T) @ inp^T (IC,N).
// The descriptors and the heuristic's algorithm are made once per shape and cached; like the rest
// of this backend they assume one host thread drives the device.
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/gemm_route.h"
#include "kernels/kernels.h"

namespace kernels::cuda {

namespace {

struct Precision {
  cudaDataType_t type;  // of the operands A and B; C, D, the bias and alpha/beta are fp32
  cublasComputeType_t compute;
};
constexpr Precision kFp32{CUDA_R_32F, CUBLAS_COMPUTE_32F};
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

// cuBLASLt descriptors, destroyed with their owner (a plan the heuristic refused, or a throw
// halfway through making one, leaks nothing).
template <class Handle, cublasStatus_t (*Destroy)(Handle)>
struct LtDeleter {
  void operator()(Handle h) const { Destroy(h); }
};
template <class Handle, cublasStatus_t (*Destroy)(Handle)>
using LtOwned = std::unique_ptr<std::remove_pointer_t<Handle>, LtDeleter<Handle, Destroy>>;
using MatmulDesc = LtOwned<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using MatrixLayout = LtOwned<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using MatmulPreference = LtOwned<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

MatrixLayout matrix_layout(cudaDataType_t type, int rows, int cols) {  // packed column-major
  cublasLtMatrixLayout_t l = nullptr;
  cublaslt_check(cublasLtMatrixLayoutCreate(&l, type, rows, cols, rows));
  return MatrixLayout(l);
}

struct GemmPlan {
  GemmRoute route;
  MatmulDesc desc;
  MatrixLayout a, b, d;  // d is C's layout too: C and D are the same matrix
  cublasLtMatmulAlgo_t algo;
};

// The plan of one route, or nullopt when the heuristic offers no algorithm for it. bias: the
// pointer the fused epilogue will read (its alignment matters to the heuristic).
std::optional<GemmPlan> make_plan(const GemmKey& k, const GemmRoute& route, const float* bias, float* aux) {
  const int m = k.op_a == CUBLAS_OP_N ? k.a_rows : k.a_cols;
  const int n = k.op_b == CUBLAS_OP_N ? k.b_cols : k.b_rows;
  GemmPlan p{route,
             nullptr,
             matrix_layout(k.type, k.a_rows, k.a_cols),
             matrix_layout(k.type, k.b_rows, k.b_cols),
             matrix_layout(CUDA_R_32F, m, n),
             {}};
  cublasLtMatmulDesc_t desc = nullptr;
  cublaslt_check(cublasLtMatmulDescCreate(&desc, k.compute, CUDA_R_32F));
  p.desc.reset(desc);
  cublaslt_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &k.op_a, sizeof(k.op_a)));
  cublaslt_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &k.op_b, sizeof(k.op_b)));
  const bool fused_bias = route.fused && k.bias, fused_gelu = route.fused && k.gelu;
  // the bias, when there is one, is fp32 like D (cuBLASLt's default bias type) and spans D's m rows
  cublasLtEpilogue_t epilogue = fused_gelu ? (fused_bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
                                           : (fused_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT);
  cublaslt_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  if (fused_bias)  // the heuristic reads the bias pointer's alignment from here
    cublaslt_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  if (fused_gelu) {  // the auxiliary (pre-GELU) matrix is fp32 like D, with D's leading dimension
    const int64_t ld = m;
    cublaslt_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
    cublaslt_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
  }

  cublasLtMatmulPreference_t pref_handle = nullptr;
  cublaslt_check(cublasLtMatmulPreferenceCreate(&pref_handle));
  MatmulPreference pref(pref_handle);
  // unfused with a GELU, the GEMM writes the auxiliary matrix
  const uint32_t align_d = k.gelu && !route.fused ? k.align_aux : k.align_d;
  const uint64_t workspace = kCublasLtWorkspaceBytes;
  const std::pair<cublasLtMatmulPreferenceAttributes_t, const uint32_t*> alignments[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &k.align_a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &k.align_b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d}};
  cublaslt_check(cublasLtMatmulPreferenceSetAttribute(pref_handle, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                      sizeof(workspace)));
  for (const auto& [attribute, value] : alignments)
    cublaslt_check(cublasLtMatmulPreferenceSetAttribute(pref_handle, attribute, value, sizeof(*value)));
  cublasLtMatmulHeuristicResult_t best{};
  int found = 0;
  cublaslt_check(cublasLtMatmulAlgoGetHeuristic(cublaslt().handle, desc, p.a.get(), p.b.get(), p.d.get(), p.d.get(),
                                                pref_handle, 1, &best, &found));
  if (found == 0) return std::nullopt;
  p.algo = best.algo;
  return p;
}

// A copy of bias (n) at a 256-byte aligned address, for the fused epilogue (kernels/gemm_route.h).
const float* aligned_bias(const float* bias, int n) {
  static auto* copy = new DeviceArray<float>();  // never freed: teardown order at exit is not ours
  float* p = copy->reserve(size_t(n));
  cuda_check(cudaMemcpyAsync(p, bias, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice, 0));
  return p;
}

// What the fused epilogue would have done, as kernels: pre (cols of m rows, column-major) holds
// the product; pre += bias (m) broadcast over the columns; with gelu out = gelu(pre), else pre is
// the output.
void epilogue_kernels(float* out, float* pre, const float* bias, int m, int cols, bool gelu) {
  if (bias) axpby_rows(pre, bias, 1.0f, 1.0f, size_t(cols), m, size_t(m), 0);
  if (gelu) gelu_forward(out, pre, m * cols);
}

// D (m,n) = op(A) op(B) [+ bias (m), broadcast over the columns] + beta * D; column-major, fp32 D.
// With gelu_aux: gelu_aux = that (beta 0), D = gelu(it).
void gemm(float* D, const Operand& A, const Operand& B, float beta, const float* bias, Precision prec,
          float* gelu_aux = nullptr) {
  static std::map<GemmKey, GemmPlan> plans;  // never freed, like the handle they belong to
  const bool gelu = gelu_aux != nullptr;
  GemmKey key{prec.type,
              prec.compute,
              A.op,
              B.op,
              A.rows,
              A.cols,
              B.rows,
              B.cols,
              bias != nullptr,
              gelu,
              alignment(A.data),
              alignment(B.data),
              alignment(D),
              alignment(bias),
              alignment(gelu_aux)};
  const int m = A.op == CUBLAS_OP_N ? A.rows : A.cols;
  const int n = B.op == CUBLAS_OP_N ? B.cols : B.rows;
  auto it = plans.find(key);
  if (it == plans.end()) {
    // test hook: the fallback taken as if the heuristic refused every fused epilogue
    static const bool refuse_fused = std::getenv("KVMTRAIN_TEST_GEMM_UNFUSED") != nullptr;
    std::optional<GemmPlan> plan;
    first_supported_route(key.bias, gelu, key.align_bias, [&](const GemmRoute& r) {
      if (refuse_fused && r.fused) return false;
      plan = make_plan(key, r, r.copy_bias ? aligned_bias(bias, m) : bias, gelu_aux);
      return plan.has_value();
    });
    if (!plan) {
      const int inner = A.op == CUBLAS_OP_N ? A.cols : A.rows;
      std::string what = "cublasLtMatmulAlgoGetHeuristic for the GEMM (m " + std::to_string(m) + ", n " +
                         std::to_string(n) + ", k " + std::to_string(inner) +
                         (prec.type == CUDA_R_16BF ? ", bf16" : ", fp32") + ", with its epilogue fused and without)";
      cublaslt_fail(CUBLAS_STATUS_NOT_SUPPORTED, what.c_str(), __FILE__, __LINE__);
    }
    it = plans.emplace(key, std::move(*plan)).first;
  }
  const GemmPlan& p = it->second;
  cublasLtMatmulDesc_t desc = p.desc.get();
  float* target = D;    // what the GEMM writes
  if (p.route.fused) {  // the cached descriptor holds the previous call's pointers
    if (bias) {
      const float* b = p.route.copy_bias ? aligned_bias(bias, m) : bias;
      cublaslt_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof(b)));
    }
    if (gelu)
      cublaslt_check(
          cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &gelu_aux, sizeof(gelu_aux)));
  } else if (gelu) {
    target = gelu_aux;
  }
  const float alpha = 1.0f;
  const CublasLt& lt = cublaslt();
  cublaslt_check(cublasLtMatmul(lt.handle, desc, &alpha, A.data, p.a.get(), B.data, p.b.get(), &beta, target, p.d.get(),
                                target, p.d.get(), &p.algo, lt.workspace, kCublasLtWorkspaceBytes, 0));
  if (!p.route.fused) epilogue_kernels(D, target, bias, m, n, gelu);
}

// out (N,OC) = inp (N,IC) @ weight (OC,IC)^T + bias; column-major: out^T (OC,N) = W (IC,OC)^T @ inp^T (IC,N).
// With pre: pre = that, out = gelu(pre). N and OC are not 0.
void forward_gemm(float* out, const void* inp, const void* weight, const float* bias, int N, int IC, int OC,
                  Precision prec, float* pre = nullptr) {
  if (IC == 0) {  // an empty product: cuBLASLt takes no empty matrix, and the result is the bias
    float* target = pre ? pre : out;
    cuda_check(cudaMemsetAsync(target, 0, (size_t)N * OC * sizeof(float)));
    epilogue_kernels(out, target, bias, OC, N, pre != nullptr);
    return;
  }
  gemm(out, {weight, CUBLAS_OP_T, IC, OC}, {inp, CUBLAS_OP_N, IC, N}, 0.0f, bias, prec, pre);
}

// dinp (N,IC) or nullptr, dweight (OC,IC): accumulated, or overwritten (beta 0, their old contents
// never read); dout (N,OC), inp (N,IC), weight (OC,IC). N and OC are not 0; IC == 0 leaves nothing
// to compute.
void backward_gemms(float* dinp, float* dweight, const void* dout, const void* inp, const void* weight, int N,
                    int IC, int OC, Precision prec, bool accumulate_dinp, bool accumulate_dweight) {
  if (IC == 0) return;
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
  launch(bias_backward_kernel, blocks_for(OC, 32), dim3(32, 32), 0, dbias, dout, N, OC);
}

__global__ void round_nearest_kernel(bf16* out, const float* inp, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = bf16_round_nearest(inp[i]);
}

// out (n) = inp (n) rounded to bf16, nearest even
void round_nearest(bf16* out, const float* inp, size_t n) {
  launch(round_nearest_kernel, blocks_for(n), kThreads, 0, out, inp, n);
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
  static auto* scratch = new DeviceArray<bf16>();  // never freed: teardown order at exit is not ours
  return scratch->reserve(n);
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
