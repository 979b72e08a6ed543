#pragma once
// The model: GPT-2 (llm.c's layout) generalised to the paper's backbone (docs/kvm.md section 12).
// A token embedding (plus a learned position table, or RoPE inside the mixers), an optional
// LayerNorm after it, pre-LayerNorm blocks of a token mixer (full attention, sliding-window
// attention or KVM, chosen per layer by model.mixers) and a GELU or ReLU^2 MLP, a final LayerNorm
// and a (tied or untied) head over the padded vocabulary. Parameters, gradients and activations are
// named views over single allocations; forward and backward are the sequence of kernel calls.
//
// Where the code lives, one job per file:
//   layout.h/.cpp       every parameter, declared once: shape, sharding, decay, initialisation
//   activations.h/.cpp  the activations of one pass, sized for (B, T)
//   model.cpp           the model's buffers, embedding, head, loss, the linear layers' precision
//   block.cpp           one block forward (training or one-token decode) and backward
//   mixer_kvm.cpp       the glue from a block's q, k, v to kernels/kvm.h
//   model_decode.cpp    token-by-token decode: per-layer caches, the same blocks on one token
//
// Tensor parallel (Megatron-LM), with a tensor communicator `tp` of size TP > 1: this rank holds
// heads [r*H/TP, (r+1)*H/TP) of every mixer (column-parallel qkv, row-parallel output projection,
// KVM gate rows and temperatures), 4C/TP rows of the MLP's fc (row-parallel proj) and rows
// [r*Vp/TP, (r+1)*Vp/TP) of the embedding and head (vocabulary-parallel cross-entropy); everything
// else is replicated. The table holds only this rank's shards, each view saying how it is sharded
// (tensor_table.h, trainer/parallel/tensor_parallel.h). Every rank of `tp` must make the same calls
// (forward, loss, backward, step) with the same inputs. TP = 1 (or no communicator) is the
// single-process code path unchanged.
//
// Backends: every kernel goes through the Backend table the model is built with (kernels/backend.h),
// and every buffer (parameters, gradients, activations, scratch, the bf16 copy) lives in that
// backend's memory: device memory on cuda, so params(), grads() and logits() are device pointers
// there; params_host / params_from_host and logits_host give the host what it reads. Forward,
// loss, backward, bf16, tensor parallelism (its collectives over NCCL) and decode work on cuda.
//
// Decode runs the training blocks themselves (block_forward) in a one-token pass: the attention
// mixers read their KV caches through the attention_decode kernel, KVM its decode cache, and the
// token shift the previous token's rows, so a backbone switch is written once.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/bf16.h"
#include "trainer/model/activations.h"
#include "trainer/model/layout.h"
#include "kernels/backend.h"
#include "trainer/parallel/communicator.h"
#include "trainer/config/config.h"
#include "common/tensor_table.h"

class Model {
 public:
  // Activations are sized for batches of up to B sequences of up to T tokens. recompute_blocks
  // (train.recompute: block): keep only each block's input and recompute its activations in
  // backward; the gradients are the same.
  // tp: the tensor-parallel communicator over host memory (null or size 1: no tensor parallelism;
  // tensor_comm(): checkpoints gather the shards over it). Throws std::invalid_argument naming the
  // key when n_head, padded_vocab_size or 4*d_model is not divisible by TP. be: where the buffers
  // live and the kernels run. tp_device: the same ranks, in the same order, over be's memory, for
  // the model's own collectives (the activations' all-reduces): NCCL on cuda, where TP > 1 without
  // it throws std::invalid_argument; null: tp (cpu). All three must outlive the model.
  Model(const config::ModelConfig& cfg, int B, int T, bool recompute_blocks = false, Communicator* tp = nullptr,
        const Backend& be = cpu_backend(), Communicator* tp_device = nullptr);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // GPT-2 initialisation: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)) (zero with
  // model.zero_init_out), biases 0, LayerNorm weights 1, token-shift mixes as RWKV-4, KVM
  // temperatures 1 and gates U(-1/sqrt(d), 1/sqrt(d)); the padded vocabulary rows stay 0.
  // Under tensor parallelism each rank draws the full tensors and keeps its shards, so that the
  // model is the TP = 1 model for the same seed. Drawn on the host, then uploaded.
  void init(uint64_t seed);

  // Logits (B, T, Vp) of `inputs` (B, T, host memory); B <= max B, T <= max T. Under tensor parallelism each
  // rank computes its vocabulary slice only: (B, T, Vp/TP), columns [r*Vp/TP, (r+1)*Vp/TP).
  void forward(const int* inputs, int B, int T);
  // Mean cross-entropy of the last forward against `targets` (B, T, host) (ignore index -1). With
  // dloss != 0 the logits are overwritten by d(dloss * sum of losses)/dlogits, ready for backward.
  float loss(const int* targets, float dloss);
  // Accumulates parameter gradients of the last forward (after loss with dloss != 0).
  void backward();
  // Makes the next backward() write the gradients instead of adding to them. No pass over memory:
  // every tensor's gradient is marked stale, and the backward's first write to it overwrites (the
  // linear layers' GEMMs with accumulate = false; the small rest zeroed just before its kernel);
  // what the backward does not reach is zeroed before it is reported final. This spares a step a
  // pass over all gradients and the weight-gradient GEMMs' read of zeros (docs/decisions.md).
  // grads() holds stale values between zero_grad() and the end of the next backward().
  void zero_grad() { std::fill(stale_.begin(), stale_.end(), 1); }
  // Called during backward() each time the gradients of [begin, end) are final (nothing later in
  // that backward writes them): ranges from the top of the buffer down, the last one beginning at
  // 0. Data parallelism starts reducing them while the rest of the backward runs.
  void on_grads_ready(std::function<void(size_t begin, size_t end)> f) { grads_ready_ = std::move(f); }

  // Mixed precision (train.precision: bf16, docs/decisions.md): every GEMM takes a bf16 copy of
  // its weight and rounds its activation operands to bf16, accumulating in fp32; everything else
  // (LayerNorm statistics, softmax, the loss, the master weights, gradients, AdamW) stays fp32.
  // refresh_bf16 remakes the copy from the fp32 masters by stochastic rounding keyed by
  // (seed, step, element): an element's index is its place in its full (unsharded) tensor plus
  // the tensor's ordinal << 40, so the copy is the same whatever the tensor or data parallelism,
  // and a resumed run remakes it exactly. Call it after every update and before the first forward.
  void use_bf16();
  bool bf16() const { return params16_.size() > 0; }
  void refresh_bf16(uint64_t seed, uint64_t step);

  // Decode, one sequence: reset_decode() starts it, step(token) feeds the next token and returns
  // the logits (Vp) of the token after it, equal to forward()'s logits at that position. Under
  // tensor parallelism every rank steps together and gets the full (Vp) logits, in host memory.
  void reset_decode();
  const float* step(int token);
  int decode_position() const { return pos_; }
  // Memory the decode caches hold now: KV caches, KVM states and windows (bytes).
  size_t decode_cache_bytes() const;

  const float* logits() const { return acts_.logits; }  // (B, T, logits_width()), backend memory
  // Rows [row, row + rows) of logits() (row = b*T + t) where the host can read them: in place on
  // cpu, else copied into `copy`.
  const float* logits_host(size_t row, size_t rows, std::vector<float>& copy) const;
  int logits_width() const { return Vl_; }  // Vp, or Vp/TP under tensor parallelism
  // The ids the softmax covers: vocab_size, or Vp with model.softmax_over_padding
  int softmax_width() const { return cfg_.softmax_over_padding ? cfg_.padded_vocab_size : cfg_.vocab_size; }
  int tp_size() const { return tp_size_; }
  int tp_rank() const { return tp_rank_; }
  Communicator* tensor_comm() const { return tp_; }
  float* params() { return params_.data(); }  // (table().total()), backend memory
  float* grads() { return grads_.data(); }    // (table().total()), backend memory
  // The parameters where the host can read and write them (checkpoints, export, init_from): the
  // buffer itself on cpu, else a copy made in `copy`; params_from_host writes such a pointer back
  // (nothing to do on cpu, where it is the buffer).
  float* params_host(std::vector<float>& copy);
  void params_from_host(const float* host);
  const Backend& backend() const { return be_; }
  const TensorTable& table() const { return lay_.table; }
  size_t num_params() const;         // this rank's parameters (its shards), padding between views excluded
  size_t activation_bytes() const { return acts_.bytes(); }
  const config::ModelConfig& cfg() const { return cfg_; }
  // Forward FLOPs per token for a sequence of length T (2 per multiply-add): 2N, N the whole
  // model's parameters whatever TP, and attention's products over the keys each query sees.
  double flops_per_token(int T) const;

  // Opaque per-KVM-layer state (tape for the backward, decode cache), defined in mixer_kvm.cpp.
  struct KvmLayer;
  struct KvmLayerDeleter {
    void operator()(KvmLayer* p) const;
  };

 private:
  struct Scratch {  // backward scratch, one block's worth, reused layer by layer (block.cpp)
    DeviceBuffer dres, dln, dxa, dtmp, datty, dqkvp, dqkv, dqkv2, dq3, dact, dv0;
    DeviceBuffer dqkvx, dgkv;           // GQA: d(the mixer's expanded q|k|v rows), d(KVM gate per key/value head)
    DeviceBuffer dvres;                 // linear and rwkv value residual: d(mixed values), (BT, Ca)
    DeviceBuffer dvr_z, dvr_h;          // rwkv value gate: d(up-projection output), d(down-projection output)
    std::vector<DeviceBuffer> danchor;  // per layer f: d(the per_mixer anchor whose first layer is f)
    DeviceBuffer dx0;                   // the anchors' share of d(stream0)
    DeviceBuffer dqh, dkh, dvh, douth, dg, dgbt, dgpre;  // KVM; dgbt: dg as (B,T,NH)
  };
  struct DecodeCache;  // model_decode.cpp
  // One forward pass through the blocks: B sequences of T tokens from position pos0, into acts.
  // decode: the per-layer caches of a token-by-token decode (null: a training pass over whole
  // sequences, which starts them at position 0).
  struct Pass {
    int B, T, pos0;
    Activations& acts;
    DecodeCache* decode;
  };
  Pass train_pass() { return {B_, T_, 0, acts_, nullptr}; }

  float* P(Param t) { return t ? params_.data() + t.off : nullptr; }
  const kernels::bf16* P16(Param t) {
    return t ? reinterpret_cast<const kernels::bf16*>(params16_.data()) + t.off : nullptr;
  }
  // The gradient of tensor t, ready to be added to: zeroed first if stale.
  float* G(Param t);
  // True, and no longer stale, when the gradient of t is stale: the caller overwrites it.
  bool claim_stale(Param t);
  float* zero_if_stale(size_t j);  // view j's gradient, zeroed first if stale
  void zero_stale(size_t begin, size_t end);  // zeroes the stale gradients of the views in [begin, end)
  bool qkv_processed(int l) const { return ::qkv_processed(cfg_, l); }
  // host tokens (n) where the backend's kernels read them: in place on cpu, else uploaded to slot
  // 0 (inputs) or 1 (targets) of tokens_
  const int* tokens_for_backend(const int* host, int slot, size_t n);
  // the residual stream entering block 0 (into a.stream0) and the logits leaving the last (a.logits)
  void embed(const Pass& p, const int* tokens_be);
  void head(const Pass& p, const float* residual);

  // block.cpp: block l of pass p, from `residual` (its input)
  void block_forward(int l, const float* residual, const Pass& p);
  void block_backward(int l, const float* residual, float* dres);
  void mixer_forward(int l, const Pass& p);
  void mixer_backward(int l, float* datty, float* dqkvp, float* dln1);
  void qkv_prep_forward(int l, const Pass& p);
  // grouped-query attention: the mixer's (BT, 3Ca) q|k|v rows from the (BT, W) prepared ones,
  // each key/value head repeated for its query heads; and back, the repeats' gradients summed
  void gqa_expand(float* dst, const float* src, int BT);
  void gqa_reduce(float* dst, const float* src, int BT);
  const float* qkv_prep_backward(int l, float* dqkvp, float* dln1);
  // out (ld) = layer l's v (ld) mixed with its anchor; and back (block.cpp)
  void value_residual_forward(int l, const Pass& p, float* out, const float* v, int ld);
  void value_residual_backward(int l, float* dv, float* dln1);
  // the per_mixer anchors of pass p from its stream0, and back through the one of first layer f,
  // adding to s_.dx0 (model.cpp)
  void anchors_forward(const Pass& p);
  void anchor_backward(int f);
  // out (B,T,C) = the token shift of inp by weights w in `form`; prev (decode): the previous
  // token's row, then this one's
  void token_shift(float* out, const float* inp, Param w, int C, kernels::TokenShiftForm form, const Pass& p,
                   DeviceBuffer* prev);
  kernels::TokenShiftForm mlp_shift_form() const;  // kvmtrain's token_shift, or the paper's mlp_shift
  kernels::RopeVariant rope_variant() const {
    return cfg_.rope_variant == config::RopeVariant::paper ? kernels::RopeVariant::paper : kernels::RopeVariant::kvmtrain;
  }
  // mixer_kvm.cpp
  void kvm_forward(int l, const Pass& p);
  void kvm_backward(int l, const float* datty, float* dqkvp, float* dln1);
  size_t kvm_cache_bytes(int l) const;
  void kvm_make(int l);
  // out (N,OC) = inp (N,IC) @ W^T + b and its backward, in the model's precision (model.cpp)
  void linear_forward(float* out, const float* inp, Param w, Param b, int N, int IC, int OC);
  // pre (N,OC) = the same, out = gelu(pre)
  void linear_gelu_forward(float* out, float* pre, const float* inp, Param w, Param b, int N, int IC, int OC);
  // dinp: added to, or written where it has no other contributor (no zeroing pass before)
  enum class Dinp { accumulate, overwrite };
  void linear_backward(float* dinp, Dinp mode, Param w, Param b, const float* dout, const float* inp, int N, int IC,
                       int OC);
  // tensor parallel (model.cpp); p in the backend's memory
  void tp_sum(float* p, size_t n) { tpd_->all_reduce_sum(p, n); }
  // out (BT, C) = inp (BT, IC) @ W^T + b for a row-parallel W (C, IC) with replicated b: partial
  // products all-reduced, then the bias; TP = 1: one matmul_forward.
  void row_parallel_forward(float* out, const float* inp, Param w, Param b, int BT, int IC);
  // Where a replicated parameter's gradient that this rank computes only in part (qk-norm, ln_s,
  // token shift, the value gate's down-projection and the linear value residual's lambda) goes: G(t) with TP = 1, else a slot of tpred_ that is all-reduced with the
  // sub-block's input gradient and then added to G(t).
  enum RedSlot { kRedShift, kRedQnw, kRedQnb, kRedKnw, kRedKnb, kRedLnsw, kRedLnsb, kRedVrDown, kRedVrLambda, kRedSlots };
  float* partial_grad(Param t, RedSlot slot);
  float* red_dln() { return tpred_.data() + red_extra_; }  // (BT, C) after the slots
  void red_begin(size_t n);
  void red_finish(size_t n, const Param* dst /* (kRedSlots) gradient targets, absent: unused */);

  config::ModelConfig cfg_;
  const Backend& be_;
  Communicator* tp_ = nullptr;   // host memory (tensor_comm(): checkpoints, the gradient norm)
  Communicator* tpd_ = nullptr;  // the same ranks over the backend's memory (tp_ on cpu)
  int tp_size_ = 1, tp_rank_ = 0;
  int Ca_ = 0, NHl_ = 0, Fl_ = 0, Vl_ = 0;  // this rank's attention width (its heads), heads, MLP width, vocab rows
  // grouped-query attention: key/value heads, their width, and the q|k|v rows' width Ca + 2*Ckv
  // (k at column Ca, v at Ca + Ckv); without GQA NKVl = NHl, Ckv = Ca, W = 3*Ca
  int NKVl_ = 0, Ckv_ = 0, W_ = 0;
  bool gqa() const { return NKVl_ != NHl_; }
  size_t red_off_[kRedSlots] = {}, red_width_[kRedSlots] = {}, red_extra_ = 0;
  DeviceBuffer tpred_;  // TP > 1: partial gradients reduced once per sub-block (slots, then (BT, C))
  DeviceBuffer tpce_;   // TP > 1: the vocabulary-parallel cross-entropy's row maxima and sums (loss)
  int maxB_, maxT_;
  bool recompute_;
  int B_ = 0, T_ = 0;
  const int* inputs_be_ = nullptr;  // the last forward's inputs in the backend's memory, for the kernels
  DeviceBuffer tokens_;             // cuda: (2, maxB*maxT) ints, the uploaded inputs and targets
  ModelLayout lay_;
  DeviceBuffer params_, grads_;
  std::vector<char> stale_;  // per view of table_ (in offset order): its gradient awaits overwriting
  std::function<void(size_t, size_t)> grads_ready_;  // on_grads_ready
  DeviceBuffer params16_;  // bf16 mixed precision: the bf16 copy of params_ (same offsets), two per float

  Activations acts_;  // the training pass's, sized for (maxB, maxT)
  Scratch s_;
  std::vector<std::unique_ptr<KvmLayer, KvmLayerDeleter>> kvm_;  // per layer, null unless kvm

  // decode (model_decode.cpp)
  struct DecodeCacheDeleter {
    void operator()(DecodeCache* p) const;
  };
  std::unique_ptr<DecodeCache, DecodeCacheDeleter> dec_;
  int pos_ = 0;
};

// model.kvm.budget as the KVM core's schedule (kernels never see configs; mixer_kvm.cpp).
kernels::KvmBudget to_kernels(config::KvmBudget budget);
