// Causal attention, full or sliding-window, through cuDNN's fused flash attention
// (train.attention_backend: cudnn), built with cuDNN's backend (graph) API: no cudnn_frontend.
// cuDNN's fused-attention engines take an operation graph and recognise a pattern in it, so the
// graphs here are op for op the ones cudnn-frontend's SDPA nodes lower to on cuDNN 9 before 9.21
// (its "composite" SDPA forward and backward, causal top-left diagonal band, bf16 I/O, fp32
// intermediates and compute, scale passed by value):
//  forward:  S = Q K^T (matmul) * scale; mask; softmax as reduce-max M, sub, exp, reduce-add Z,
//            div (the probabilities P in bf16), with Stats = M + log Z written out; O = P V (matmul)
//  backward: softmax_sum = rowsum(dO * O) * 1 (a graph output in our memory); E = exp(mask(
//            Q K^T * scale - Stats)); dV = E^T dO (reshape to bf16, matmul); dS = (dO V^T -
//            softmax_sum) * E * scale; dK = dS^T Q (reshape, matmul); dQ_accum = dS K (fp32, our
//            zeroed memory), dQ = identity(dQ_accum)
//  mask:     keep key j for query i when i >= j (GEN_INDEX row, GEN_INDEX column, CMP_GE) and, with
//            a window, when j + window > i (GEN_INDEX twice, ADD, CMP_GT), each a BINARY_SELECT
//            between the score and -inf. So query t sees keys (t-window, t], kernels/kernels.h's
//            convention.
// Stats is cuDNN's softmax statistic max + log(sum exp), natural log, of the scaled masked scores:
// exactly our lse, so it is written to and read from lse in place ((B,NH,T) is the packed
// (B,NH,T,1) cuDNN wants). Q, K, V, dQ, dK, dV are strided views into a bf16 copy of qkv and of
// dqkv, (B,T,3,NH,hs): no transposes, K^T and V^T are the same memory with the last two strides
// swapped. O and dO are (B,T,NH,hs) views of bf16 copies of out and dout.
// A graph, its plan (the first engine configuration heuristics mode A, then the fallback mode,
// offer that finalizes) and its by-value scalars are built once per (B, T, C, NH, window,
// direction) and kept for the process, on the device current at first use; the bf16 copies and
// the workspace are grown on demand and shared by every layer (the kernels run in order on the
// default stream).
#include <cudnn.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cudnn_attention.h"

namespace kernels::cuda {

namespace {

// ---- cudnn_check(call): every cuDNN call goes through it ------------------------------------

constexpr const char* kNoEngine =
    "no cuDNN engine supports this attention graph: cuDNN's fused attention needs cuDNN 9 (not "
    "9.10.0/9.10.1), an sm_80+ GPU, bf16 q/k/v, a head size C/NH that is a multiple of 8 and at most 128, "
    "and libnvrtc loadable for its runtime-compiled kernels";

const char* cudnn_likely_cause(cudnnStatus_t st) {
  switch (st) {
    case CUDNN_STATUS_NOT_INITIALIZED:
      return "cuDNN could not start: no usable GPU, or a driver too old for this cuDNN";
    case CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH:
    case CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED:
      return "cuDNN's sub-libraries (libcudnn_graph, libcudnn_engines_*, libcudnn_heuristic) are missing or of "
             "another version than libcudnn.so: check LD_LIBRARY_PATH";
    default:
      break;
  }
  switch (CUDNN_STATUS_CATEGORY(st)) {
    case CUDNN_STATUS_BAD_PARAM:
      return "a descriptor attribute or variant-pack entry cuDNN rejects: a dimension, stride or data type, a "
             "tensor left unbound, or a pointer not 16-byte aligned";
    case CUDNN_STATUS_NOT_SUPPORTED:
      return kNoEngine;
    case CUDNN_STATUS_INTERNAL_ERROR:
      return "cuDNN failed inside: often out of GPU memory, or NVRTC failed to compile a runtime kernel";
    case CUDNN_STATUS_EXECUTION_FAILED:
      return "the attention kernels failed to run: an out-of-bounds pointer (run under compute-sanitizer) or an "
             "earlier asynchronous CUDA error";
    default:
      return "see the cuDNN documentation for this status";
  }
}

// Throws std::runtime_error: "<call> failed at file.cu:12: CUDNN_STATUS_... (cuDNN's last error
// message); likely cause: ...", on one line.
[[noreturn]] void cudnn_fail(cudnnStatus_t st, const std::string& call, const char* file, int line) {
  char detail[1024] = {};
  cudnnGetLastErrorString(detail, sizeof detail);
  std::string msg = call + " failed at " + file + ":" + std::to_string(line) + ": " + cudnnGetErrorString(st);
  if (detail[0]) msg += " (" + std::string(detail) + ")";
  for (char& c : msg)
    if (c == '\n') c = ' ';
  throw std::runtime_error(msg + "; likely cause: " + cudnn_likely_cause(st));
}

void cudnn_check_result(cudnnStatus_t st, const std::string& call, const char* file, int line) {
  if (st != CUDNN_STATUS_SUCCESS) cudnn_fail(st, call, file, line);
}

#define cudnn_check(call) cudnn_check_result((call), #call, __FILE__, __LINE__)

// The process's cuDNN handle on the current device, on the default stream; never destroyed
// (teardown order at exit is not ours to control), like the cuBLAS handle.
cudnnHandle_t cudnn_handle() {
  static cudnnHandle_t handle = [] {
    cudnnHandle_t h = nullptr;
    cudnn_check(cudnnCreate(&h));
    return h;
  }();
  return handle;
}

// ---- the graphs ----------------------------------------------------------------------------

using Desc = cudnnBackendDescriptor_t;
using Dims = std::array<int64_t, 4>;

struct Shape {
  int B, T, C, NH, hs, window;
  float scale;
};

// Tensors bound to memory at each execution; virtual tensors and by-value scalars are numbered
// from kFirstInternal on.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV, kSoftmaxSum, kDQAccum, kFirstInternal = 100 };

enum class Bind { device, value, internal };  // in device memory, a host scalar, or only between ops

class Graph {
 public:
  explicit Graph(const Shape& s) : s_(s) {}
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  // Reached only when a build fails (cached graphs live for the process). A destructor must not
  // throw, so the statuses are not checked.
  ~Graph() {
    for (auto it = owned_.rbegin(); it != owned_.rend(); ++it) cudnnBackendDestroyDescriptor(*it);
  }

  void build_forward();
  void build_backward();
  int64_t workspace_bytes() const { return workspace_; }
  // Runs the plan on the default stream with the device tensors `bound` ({uid, pointer}).
  void execute(const std::vector<std::pair<Uid, const void*>>& bound, void* workspace);

 private:
  // Every attribute set, finalize and creation names the op being built (label_) when it fails;
  // the message is composed only then.
  void check(cudnnStatus_t st, const char* call, const char* what = nullptr, int64_t number = 0) {
    if (st == CUDNN_STATUS_SUCCESS) return;
    std::string where = std::string(call) + "(" + label_;
    if (what) where += std::string(", ") + what + " " + std::to_string(number);
    cudnn_fail(st, where + ")", __FILE__, __LINE__);
  }
  void set(Desc d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t n, const void* v) {
    check(cudnnBackendSetAttribute(d, name, type, n, v), "cudnnBackendSetAttribute", "attribute", name);
  }
  void link(Desc d, cudnnBackendAttributeName_t name, Desc value) {
    set(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value);
  }
  void finalize(Desc d) { check(cudnnBackendFinalize(d), "cudnnBackendFinalize"); }
  Desc make(cudnnBackendDescriptorType_t type) {
    Desc d = nullptr;
    check(cudnnBackendCreateDescriptor(type, &d), "cudnnBackendCreateDescriptor", "descriptor type", type);
    owned_.push_back(d);
    return d;
  }

  Desc tensor(int64_t uid, cudnnDataType_t type, const Dims& dims, const Dims& strides, Bind bind);
  Desc internal(cudnnDataType_t type, const Dims& dims, const Dims& strides) {
    return tensor(next_uid_++, type, dims, strides, Bind::internal);
  }
  // (B,NH,T,T) scores and (B,NH,T,1) row statistics, only between ops
  Desc scores(cudnnDataType_t type) {
    const int64_t h = s_.NH, t = s_.T;
    return internal(type, {s_.B, h, t, t}, {h * t * t, t * t, t, 1});
  }
  Desc rows() {
    const int64_t h = s_.NH, t = s_.T;
    return internal(CUDNN_DATA_FLOAT, {s_.B, h, t, 1}, {h * t, t, 1, 1});
  }
  // (B,NH,T,T) scores read transposed, the key index first: the bf16 input of a matmul
  Desc scores_transposed() {
    const int64_t h = s_.NH, t = s_.T;
    return internal(CUDNN_DATA_BFLOAT16, {s_.B, h, t, t}, {h * t * t, t * t, 1, t});
  }
  // A one-element fp32 tensor passed by value
  Desc scalar(float value) {
    values_.push_back(value);
    value_uids_.push_back(next_uid_);
    return tensor(next_uid_++, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, Bind::value);
  }

  // y = mode(x[, b[, t]]), computed in `precision`; axis: GEN_INDEX's dimension
  void pointwise(const char* label, cudnnPointwiseMode_t mode, cudnnDataType_t precision, Desc x, Desc b, Desc t,
                 Desc y, int64_t axis = -1);
  void matmul(const char* label, Desc a, Desc b, Desc c);
  void reduce(const char* label, cudnnReduceTensorOp_t op, Desc x, Desc y);
  void reshape(const char* label, Desc x, Desc y);
  Desc mask(Desc x);
  Desc band(Desc x, int window);
  void finish();

  Shape s_;
  std::vector<Desc> owned_, ops_;
  std::deque<float> values_;  // the by-value scalars: a deque keeps their addresses
  std::vector<int64_t> value_uids_;
  int64_t next_uid_ = kFirstInternal;
  std::string label_ = "graph";  // the op being built, for errors
  Desc plan_ = nullptr;
  int64_t workspace_ = 0;
};

Desc Graph::tensor(int64_t uid, cudnnDataType_t type, const Dims& dims, const Dims& strides, Bind bind) {
  label_ = "tensor uid " + std::to_string(uid);
  Desc t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  const int64_t alignment = 16;
  const bool is_virtual = bind == Bind::internal, by_value = bind == Bind::value;
  set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
  set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
  set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data());
  set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data());
  set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
  set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
  set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
  finalize(t);
  return t;
}

void Graph::pointwise(const char* label, cudnnPointwiseMode_t mode, cudnnDataType_t precision, Desc x, Desc b, Desc t,
                      Desc y, int64_t axis) {
  label_ = label;
  Desc pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
  set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
  set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &precision);
  if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
  finalize(pw);
  Desc op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
  link(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
  link(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
  if (b) link(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b);
  if (t) link(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t);
  link(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
  finalize(op);
  ops_.push_back(op);
}

void Graph::matmul(const char* label, Desc a, Desc b, Desc c) {
  label_ = label;
  Desc mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
  const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
  finalize(mm);
  Desc op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
  link(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a);
  link(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b);
  link(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c);
  link(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm);
  finalize(op);
  ops_.push_back(op);
}

void Graph::reduce(const char* label, cudnnReduceTensorOp_t mode, Desc x, Desc y) {
  label_ = label;
  Desc r = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
  const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  set(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
  set(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
  finalize(r);
  Desc op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
  link(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x);
  link(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y);
  link(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, r);
  finalize(op);
  ops_.push_back(op);
}

void Graph::reshape(const char* label, Desc x, Desc y) {
  label_ = label;
  Desc op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
  link(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x);
  link(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y);
  finalize(op);
  ops_.push_back(op);
}

// The causal mask, then the window's: cudnn-frontend's diagonal band with right bound 0 and left
// bound `window`, two separate masks as it builds them.
Desc Graph::mask(Desc x) {
  Desc causal = band(x, 0);
  return s_.window > 0 ? band(causal, s_.window) : causal;
}

// window 0: keep key j of query i when i >= j; window > 0: when j + window > i. Masked scores
// become -inf (the lowest float before cuDNN 9.10, as cudnn-frontend passes).
Desc Graph::band(Desc x, int window) {
  Desc row = scores(CUDNN_DATA_INT32), col = scores(CUDNN_DATA_INT32);
  pointwise("mask: query index", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, x, nullptr, nullptr, row, 2);
  pointwise("mask: key index", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, x, nullptr, nullptr, col, 3);
  Desc keep = scores(CUDNN_DATA_BOOLEAN);
  if (window == 0) {
    pointwise("mask: query >= key", CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, nullptr, keep);
  } else {
    Desc shifted = scores(CUDNN_DATA_FLOAT);
    pointwise("mask: key + window", CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, col, scalar(float(window)), nullptr,
              shifted, 3);
    pointwise("mask: key + window > query", CUDNN_POINTWISE_CMP_GT, CUDNN_DATA_BOOLEAN, shifted, row, nullptr, keep);
  }
  const float masked =
      cudnnGetVersion() < 91000 ? std::numeric_limits<float>::lowest() : -std::numeric_limits<float>::infinity();
  Desc out = scores(CUDNN_DATA_FLOAT);
  pointwise("mask: select", CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, x, scalar(masked), keep, out);
  return out;
}

void Graph::build_forward() {
  const int64_t b = s_.B, h = s_.NH, t = s_.T, d = s_.hs, C = s_.C, C3 = 3 * s_.C;
  const Dims heads{b, h, t, d}, in_qkv{t * C3, d, C3, 1};  // q, k, v rows of the (B,T,3C) copy
  const Dims heads_t{b, h, d, t}, in_qkv_t{t * C3, d, 1, C3};  // K^T: the same memory
  Desc q = tensor(kQ, CUDNN_DATA_BFLOAT16, heads, in_qkv, Bind::device);
  Desc kt = tensor(kK, CUDNN_DATA_BFLOAT16, heads_t, in_qkv_t, Bind::device);
  Desc v = tensor(kV, CUDNN_DATA_BFLOAT16, heads, in_qkv, Bind::device);
  Desc o = tensor(kO, CUDNN_DATA_BFLOAT16, heads, {t * C, d, C, 1}, Bind::device);
  Desc stats = tensor(kStats, CUDNN_DATA_FLOAT, {b, h, t, 1}, {h * t, t, 1, 1}, Bind::device);
  Desc scale = scalar(s_.scale);

  Desc s0 = scores(CUDNN_DATA_FLOAT), s1 = scores(CUDNN_DATA_FLOAT);
  matmul("forward: Q K^T", q, kt, s0);
  pointwise("forward: * scale", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, s0, scale, nullptr, s1);
  Desc s2 = mask(s1);
  // softmax with its statistics: M = max, E = exp(S - M), Z = sum E, Stats = M + log Z, P = E / Z
  Desc m = rows(), centred = scores(CUDNN_DATA_FLOAT), e = scores(CUDNN_DATA_FLOAT), z = rows(), log_z = rows();
  reduce("forward: softmax max", CUDNN_REDUCE_TENSOR_MAX, s2, m);
  pointwise("forward: softmax S - M", CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, s2, m, nullptr, centred);
  pointwise("forward: softmax exp", CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, centred, nullptr, nullptr, e);
  reduce("forward: softmax sum", CUDNN_REDUCE_TENSOR_ADD, e, z);
  pointwise("forward: softmax log Z", CUDNN_POINTWISE_LOG, CUDNN_DATA_FLOAT, z, nullptr, nullptr, log_z);
  pointwise("forward: Stats = M + log Z", CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, m, log_z, nullptr, stats);
  // the probabilities enter the second matmul in the I/O type, as cudnn-frontend declares them
  Desc p = scores(CUDNN_DATA_BFLOAT16);
  pointwise("forward: softmax E / Z", CUDNN_POINTWISE_DIV, CUDNN_DATA_FLOAT, e, z, nullptr, p);
  matmul("forward: P V", p, v, o);
  finish();
}

void Graph::build_backward() {
  const int64_t b = s_.B, h = s_.NH, t = s_.T, d = s_.hs, C = s_.C, C3 = 3 * s_.C;
  const Dims heads{b, h, t, d}, in_qkv{t * C3, d, C3, 1}, in_out{t * C, d, C, 1};
  const Dims heads_t{b, h, d, t}, in_qkv_t{t * C3, d, 1, C3};
  Desc q = tensor(kQ, CUDNN_DATA_BFLOAT16, heads, in_qkv, Bind::device);
  Desc kt = tensor(kK, CUDNN_DATA_BFLOAT16, heads_t, in_qkv_t, Bind::device);
  Desc vt = tensor(kV, CUDNN_DATA_BFLOAT16, heads_t, in_qkv_t, Bind::device);
  Desc o = tensor(kO, CUDNN_DATA_BFLOAT16, heads, in_out, Bind::device);
  Desc d_o = tensor(kDO, CUDNN_DATA_BFLOAT16, heads, in_out, Bind::device);
  Desc stats = tensor(kStats, CUDNN_DATA_FLOAT, {b, h, t, 1}, {h * t, t, 1, 1}, Bind::device);
  Desc dq = tensor(kDQ, CUDNN_DATA_BFLOAT16, heads, in_qkv, Bind::device);
  Desc dk = tensor(kDK, CUDNN_DATA_BFLOAT16, heads, in_qkv, Bind::device);
  Desc dv = tensor(kDV, CUDNN_DATA_BFLOAT16, heads, in_qkv, Bind::device);
  // fp32 graph tensors in our memory: cudnn-frontend keeps them in its workspace
  Desc softmax_sum = tensor(kSoftmaxSum, CUDNN_DATA_FLOAT, {b, h, t, 1}, {h * t, t, 1, 1}, Bind::device);
  Desc dq_accum = tensor(kDQAccum, CUDNN_DATA_FLOAT, heads, {h * t * d, t * d, d, 1}, Bind::device);
  Desc scale = scalar(s_.scale), one = scalar(1.0f);

  // softmax_sum_i = dO_i . O_i
  Desc do_o = internal(CUDNN_DATA_FLOAT, heads, {h * t * d, t * d, h * d, 1}), row_sum = rows();
  pointwise("backward: dO * O", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, d_o, o, nullptr, do_o);
  reduce("backward: rowsum dO * O", CUDNN_REDUCE_TENSOR_ADD, do_o, row_sum);
  pointwise("backward: softmax_sum", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, row_sum, one, nullptr, softmax_sum);

  // E = exp(mask(scale Q K^T - Stats)), the probabilities recomputed; dV = E^T dO
  Desc s0 = scores(CUDNN_DATA_FLOAT), s1 = scores(CUDNN_DATA_FLOAT), s2 = scores(CUDNN_DATA_FLOAT);
  matmul("backward: Q K^T", q, kt, s0);
  pointwise("backward: * scale", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, s0, scale, nullptr, s1);
  pointwise("backward: - Stats", CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, s1, stats, nullptr, s2);
  Desc s3 = mask(s2), e = scores(CUDNN_DATA_FLOAT), e_t = scores_transposed();
  pointwise("backward: exp", CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, s3, nullptr, nullptr, e);
  reshape("backward: E^T", e, e_t);
  matmul("backward: dV = E^T dO", e_t, d_o, dv);

  // dS = E * (dO V^T - softmax_sum) * scale; dK = dS^T Q
  Desc dp0 = scores(CUDNN_DATA_FLOAT), dp1 = scores(CUDNN_DATA_FLOAT), dp2 = scores(CUDNN_DATA_FLOAT);
  Desc ds = scores(CUDNN_DATA_FLOAT), ds_t = scores_transposed();
  matmul("backward: dO V^T", d_o, vt, dp0);
  pointwise("backward: - softmax_sum", CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, dp0, softmax_sum, nullptr, dp1);
  pointwise("backward: * E", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, dp1, e, nullptr, dp2);
  pointwise("backward: dS = * scale", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, dp2, scale, nullptr, ds);
  reshape("backward: dS^T", ds, ds_t);
  matmul("backward: dK = dS^T Q", ds_t, q, dk);

  // dQ = dS K, accumulated in fp32 by the engine, then rounded to bf16
  Desc k = internal(CUDNN_DATA_FLOAT, heads, in_qkv);
  reshape("backward: K from K^T", kt, k);
  matmul("backward: dQ_accum = dS K", ds, k, dq_accum);
  pointwise("backward: dQ", CUDNN_POINTWISE_IDENTITY, CUDNN_DATA_FLOAT, dq_accum, nullptr, nullptr, dq);
  finish();
}

// The operation graph, then the first engine configuration that finalizes into a plan, from
// heuristics mode A and then the fallback mode.
void Graph::finish() {
  cudnnHandle_t handle = cudnn_handle();
  label_ = "operation graph";
  Desc graph = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(ops_.size()), ops_.data());
  set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  finalize(graph);

  cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
  int64_t tried = 0;
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    label_ = mode == CUDNN_HEUR_MODE_A ? "engine heuristics mode A" : "engine heuristics fallback mode";
    Desc heuristics = make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    link(heuristics, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
    set(heuristics, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    finalize(heuristics);
    int64_t count = 0;
    cudnn_check(cudnnBackendGetAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                         &count, nullptr));
    std::vector<Desc> configs(static_cast<size_t>(count));
    for (Desc& c : configs) c = make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    cudnn_check(cudnnBackendGetAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                         count, &count, configs.data()));
    for (int64_t i = 0; i < count; i++) {
      label_ = "execution plan";
      Desc plan = make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      set(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
      link(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, configs[size_t(i)]);
      // an engine that does not support this graph refuses here; the next one may not
      last = cudnnBackendFinalize(plan);
      tried++;
      if (last == CUDNN_STATUS_SUCCESS) {
        plan_ = plan;
        int64_t n = 0;
        cudnn_check(cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                                             &workspace_));
        return;
      }
    }
  }
  cudnn_fail(last,
             "cudnnBackendFinalize(execution plan) for each of the " + std::to_string(tried) +
                 " engine configurations heuristics modes A and fallback offered (B " + std::to_string(s_.B) + ", T " +
                 std::to_string(s_.T) + ", NH " + std::to_string(s_.NH) + ", hs " + std::to_string(s_.hs) +
                 ", window " + std::to_string(s_.window) + ")",
             __FILE__, __LINE__);
}

void Graph::execute(const std::vector<std::pair<Uid, const void*>>& bound, void* workspace) {
  std::vector<int64_t> uids;
  std::vector<void*> pointers;
  for (const auto& [uid, p] : bound) uids.push_back(uid), pointers.push_back(const_cast<void*>(p));
  for (size_t i = 0; i < values_.size(); i++) uids.push_back(value_uids_[i]), pointers.push_back(&values_[i]);
  label_ = "variant pack";
  Desc pack = nullptr;
  cudnn_check(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack));
  // destroyed on every way out, a throw from the calls below included
  std::unique_ptr<std::remove_pointer_t<Desc>, decltype(&cudnnBackendDestroyDescriptor)> owned(
      pack, cudnnBackendDestroyDescriptor);
  set(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, int64_t(uids.size()), uids.data());
  set(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, int64_t(pointers.size()), pointers.data());
  set(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
  finalize(pack);
  cudnn_check(cudnnBackendExecute(cudnn_handle(), plan_, pack));
}

// ---- shapes, the graph cache, scratch --------------------------------------------------------

Shape shape_of(int B, int T, int C, int NH, int window) {
  if (NH <= 0 || C % NH != 0) throw std::invalid_argument("attention (cudnn): C must be a multiple of NH");
  const int hs = C / NH;
  if (hs % 8 != 0 || hs > 128)
    throw std::invalid_argument("attention (cudnn): head size " + std::to_string(hs) +
                                " is not one cuDNN's fused attention takes on every sm_80+ GPU (a multiple of 8, at "
                                "most 128)");
  if (window < 0) throw std::invalid_argument("attention (cudnn): window must be >= 0");
  return {B, T, C, NH, hs, window, 1.0f / std::sqrt(float(hs))};
}

// Versions cudnn-frontend refuses or works around for exactly these graphs.
void check_version(const Shape& s, bool backward) {
  const size_t v = cudnnGetVersion();
  const std::string use = " (train.attention_backend: native does not need it)";
  if (v == 91000 || v == 91001)
    throw std::runtime_error("attention (cudnn): cuDNN " + std::to_string(v) +
                             " has known bugs in its fused attention; use another cuDNN 9" + use);
  if (backward && v <= 91500 && s.T % 128 != 0)
    throw std::runtime_error("attention (cudnn): the fused attention backward of cuDNN " + std::to_string(v) +
                             " (<= 9.15) needs T a multiple of 128 without a padding-mask workaround this graph "
                             "lacks; T is " +
                             std::to_string(s.T) + use);
}

Graph& graph_for(const Shape& s, bool backward) {
  using Key = std::tuple<int, int, int, int, int, bool>;
  // never destroyed, like the handle its plans belong to
  static auto* cache = new std::map<Key, std::unique_ptr<Graph>>();
  const Key key{s.B, s.T, s.C, s.NH, s.window, backward};
  auto it = cache->find(key);
  if (it != cache->end()) return *it->second;
  check_version(s, backward);
  auto g = std::make_unique<Graph>(s);
  if (backward)
    g->build_backward();
  else
    g->build_forward();
  return *cache->emplace(key, std::move(g)).first->second;
}

// A device buffer grown on demand and kept (DeviceArray: growing waits for nothing), typed per use.
class Scratch {
 public:
  template <class T>
  T* get(size_t n) {
    return reinterpret_cast<T*>(bytes_.reserve(n * sizeof(T)));
  }

 private:
  DeviceArray<char> bytes_;
};

struct Buffers {
  Scratch qkv, out, dout, dqkv, softmax_sum, dq_accum, workspace;
};
Buffers& buffers() {
  static auto* b = new Buffers();  // never freed: teardown order at exit is not ours to control
  return *b;
}

__global__ void round_bf16_kernel(bf16* out, const float* inp, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = bf16_round_nearest(inp[i]);
}

// out = inp, or out += inp with accumulate
__global__ void widen_bf16_kernel(float* out, const bf16* inp, size_t n, bool accumulate) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = accumulate ? out[i] + bf16_to_float(inp[i]) : bf16_to_float(inp[i]);
}

void round_bf16(bf16* out, const float* inp, size_t n) {
  launch(round_bf16_kernel, blocks_for(n), kThreads, 0, out, inp, n);
}

void widen_bf16(float* out, const bf16* inp, size_t n, bool accumulate) {
  launch(widen_bf16_kernel, blocks_for(n), kThreads, 0, out, inp, n, accumulate);
}

void* workspace_for(const Graph& g) { return buffers().workspace.get<char>(size_t(g.workspace_bytes())); }

void check_lse(const void* lse) {
  if (reinterpret_cast<uintptr_t>(lse) % 16 != 0)
    throw std::invalid_argument("attention (cudnn): lse must be 16-byte aligned (cuDNN reads and writes it in place)");
}

}  // namespace

void cudnn_attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH, int window) {
  // out (B,T,C), lse (B,NH,T), qkv (B,T,3C); device
  const Shape s = shape_of(B, T, C, NH, window);
  const size_t n_qkv = size_t(B) * T * 3 * C, n_out = size_t(B) * T * C;
  if (n_out == 0) return;
  check_lse(lse);
  Graph& g = graph_for(s, false);
  Buffers& buf = buffers();
  bf16* qkv16 = buf.qkv.get<bf16>(n_qkv);  // (B,T,3C)
  bf16* out16 = buf.out.get<bf16>(n_out);  // (B,T,C)
  round_bf16(qkv16, qkv, n_qkv);
  g.execute({{kQ, qkv16}, {kK, qkv16 + C}, {kV, qkv16 + 2 * C}, {kO, out16}, {kStats, lse}}, workspace_for(g));
  widen_bf16(out, out16, n_out, false);
}

void cudnn_attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out, const float* lse,
                              int B, int T, int C, int NH, int window) {
  // dqkv (B,T,3C) accumulated; dout, out (B,T,C); qkv (B,T,3C); lse (B,NH,T); device
  const Shape s = shape_of(B, T, C, NH, window);
  const size_t n_qkv = size_t(B) * T * 3 * C, n_out = size_t(B) * T * C, n_rows = size_t(B) * NH * T;
  if (n_out == 0) return;
  check_lse(lse);
  Graph& g = graph_for(s, true);
  Buffers& buf = buffers();
  bf16* qkv16 = buf.qkv.get<bf16>(n_qkv);     // (B,T,3C)
  bf16* out16 = buf.out.get<bf16>(n_out);     // (B,T,C)
  bf16* dout16 = buf.dout.get<bf16>(n_out);   // (B,T,C)
  bf16* dqkv16 = buf.dqkv.get<bf16>(n_qkv);   // (B,T,3C), every element written by dQ, dK or dV
  float* softmax_sum = buf.softmax_sum.get<float>(n_rows);  // (B,NH,T)
  float* dq_accum = buf.dq_accum.get<float>(n_out);         // (B,NH,T,hs)
  round_bf16(qkv16, qkv, n_qkv);
  // out holds the forward's bf16 output widened, so this rounding gives those bits back
  round_bf16(out16, out, n_out);
  round_bf16(dout16, dout, n_out);
  // cuDNN before 9.6 expects dQ_accum zeroed (cudnn-frontend clears it there); later ones clear it themselves
  cuda_check(cudaMemsetAsync(dq_accum, 0, n_out * sizeof(float)));
  g.execute({{kQ, qkv16},
             {kK, qkv16 + C},
             {kV, qkv16 + 2 * C},
             {kO, out16},
             {kDO, dout16},
             {kStats, lse},
             {kDQ, dqkv16},
             {kDK, dqkv16 + C},
             {kDV, dqkv16 + 2 * C},
             {kSoftmaxSum, softmax_sum},
             {kDQAccum, dq_accum}},
            workspace_for(g));
  widen_bf16(dqkv, dqkv16, n_qkv, true);
}

}  // namespace kernels::cuda
