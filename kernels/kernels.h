#pragma once
// Every kernel of the model, declared once for both backends so the twins cannot drift apart:
// kernels::cpu takes host pointers, kernels::cuda device pointers (launched on the default stream).
// All tensors are fp32 (bf16 where the type says so), row-major, shapes in the comments. Conventions, as in llm.c:
//  - forward outputs are OVERWRITTEN;
//  - gradient outputs ACCUMULATE (+=): the trainer sums over micro-steps, and a tensor feeding two
//    consumers collects both contributions in place;
//  - the exceptions: crossentropy_forward_backward and crossentropy_shard_finish, see there;
//    matmul_backward's gradients when told to overwrite (accumulate_dinp, accumulate_dweight
//    false): the first micro-step writes the weight gradients rather than add them to zeros,
//    which spares a step the pass that zeroes 0.5 GB of GPT-2 124M gradients and the GEMMs' read
//    of those zeros (trainer/model/model.h), and a block's backward writes the activation gradients
//    that have one producer instead of zeroing them first; and gelu_backward and relu2_backward,
//    which write dinp (in place when dinp == dout), as the activation gradient they produce has
//    no other contributor.
// An entry is X(return type, name, (parameters)); comments inside must be /* */ because the
// lists are macros.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/bf16.h"

namespace kernels {
// Elements [begin, end) of a buffer.
struct IndexRange {
  size_t begin, end;
};

// How rope_forward / rope_backward turn a pair (the table's entry says how each rotates).
enum class RopeVariant {
  kvmtrain,  // pair i at frequency base^(-2i/R)
  paper,     // the paper's code: base^(-i/(R/2-1)), from 1 down to 1/base (1 alone when R == 2)
};

// The exponent of base in pair i's frequency, shared by both twins (host and device).
KVM_HOST_DEVICE inline double rope_exponent(int i, int R, RopeVariant variant) {
  if (variant == RopeVariant::kvmtrain) return -2.0 * i / R;
  return R == 2 ? 0.0 : -(double)i / (R / 2 - 1);
}
}  // namespace kernels

// The kernels, each implemented by both backends.
#define KVM_KERNELS_ALL_BACKENDS(X)                                                                  \
  /* tanh approximation, as GPT-2 */                                                                 \
  X(void, gelu_forward, (float* out /*(N)*/, const float* inp /*(N)*/, int N))                       \
  X(void, gelu_backward, (float* dinp /*(N), written; may be dout*/, const float* inp /*(N)*/,      \
                          const float* dout /*(N)*/, int N))                                         \
  /* out = wte[inp] + wpe[t]; wpe nullptr: no learned positions. wte holds the vocabulary rows       \
     [v0, v0+Vl) (all of it: v0 = 0, Vl = Vp); under tensor parallelism a token of another shard     \
     gives a zero row, positions included, so the sum over the shards is its owner's row + wpe[t].   \
     The backward gives dwte the shard's tokens only and dwpe every position. */                     \
  X(void, encoder_forward, (float* out /*(B,T,C)*/, const int* inp /*(B,T)*/,                        \
                            const float* wte /*(Vl,C)*/, const float* wpe /*(maxT,C) or nullptr*/,   \
                            int B, int T, int C, int v0, int Vl))                                    \
  X(void, encoder_backward, (float* dwte /*(Vl,C)*/, float* dwpe /*(maxT,C) or nullptr*/,            \
                             const float* dout /*(B,T,C)*/, const int* inp /*(B,T)*/, int B, int T,  \
                             int C, int v0, int Vl))                                                 \
  /* eps 1e-5, biased variance; mean and rstd are saved for the backward */                          \
  X(void, layernorm_forward, (float* out /*(N,C)*/, float* mean /*(N)*/, float* rstd /*(N)*/,       \
                              const float* inp /*(N,C)*/, const float* weight /*(C)*/,              \
                              const float* bias /*(C)*/, int N, int C))                             \
  X(void, layernorm_backward, (float* dinp /*(N,C)*/, float* dweight /*(C)*/, float* dbias /*(C)*/, \
                               const float* dout /*(N,C)*/, const float* inp /*(N,C)*/,             \
                               const float* weight /*(C)*/, const float* mean /*(N)*/,               \
                               const float* rstd /*(N)*/, int N, int C))                             \
  /* out = inp @ weight^T + bias */                                                                  \
  X(void, matmul_forward, (float* out /*(N,OC)*/, const float* inp /*(N,IC)*/,                      \
                           const float* weight /*(OC,IC)*/, const float* bias /*(OC) or nullptr*/,   \
                           int N, int IC, int OC))                                                   \
  /* dinp += with accumulate_dinp, = without; dweight and dbias likewise with accumulate_dweight */ \
  X(void, matmul_backward, (float* dinp /*(N,IC) or nullptr*/, float* dweight /*(OC,IC)*/,          \
                            float* dbias /*(OC) or nullptr*/, const float* dout /*(N,OC)*/,          \
                            const float* inp /*(N,IC)*/, const float* weight /*(OC,IC)*/, int N,    \
                            int IC, int OC, bool accumulate_dinp, bool accumulate_dweight))          \
  /* Causal multi-head attention, scale 1/sqrt(hs), hs = C/NH. qkv rows are q,k,v each C wide,     \
     head h at columns [h*hs,(h+1)*hs) of each. Query t sees keys [attention_first_key(t, window,  \
     block), t]: window 0: [0,t]; window > 0, block 0: the sliding window (t-window, t]; window > 0, \
     block > 0: the block sliding window, t's own chunk of `block` tokens and the window/block - 1  \
     whole chunks before it (window a multiple of block: attention_check_window). Flash-style: the  \
     T x T matrix is never stored; lse (the per-row logsumexp of the scaled scores) lets the        \
     backward recompute the probabilities. */                                                       \
  X(void, attention_forward, (float* out /*(B,T,C)*/, float* lse /*(B,NH,T)*/,                      \
                              const float* qkv /*(B,T,3C)*/, int B, int T, int C, int NH, int window, \
                              int block))                                                            \
  X(void, attention_backward, (float* dqkv /*(B,T,3C)*/, const float* dout /*(B,T,C)*/,            \
                               const float* qkv /*(B,T,3C)*/, const float* out /*(B,T,C)*/,         \
                               const float* lse /*(B,NH,T)*/, int B, int T, int C, int NH,          \
                               int window, int block))                                               \
  /* One new token per sequence at position pos (the same for all B), attending over a ring cache:  \
     writes the token's k and v into slot pos % cap, then out = attention_forward's row t = pos      \
     (same qkv layout, scale and window rule) over the keys [first, pos], key j in slot j % cap.     \
     The keys must fit: cap >= pos+1 for full attention, cap >= window for a (block) sliding window  \
     (attention_decode_first_key throws std::invalid_argument otherwise). */                         \
  X(void, attention_decode, (float* out /*(B,C)*/, float* k_cache /*(B,cap,C)*/,                    \
                             float* v_cache /*(B,cap,C)*/, const float* qkv /*(B,3C)*/, int B,       \
                             int C, int NH, int pos, int cap, int window, int block))                \
  /* Fused softmax + cross-entropy over the padded vocabulary; columns [V,Vp) never take part.     \
     Writes losses[i] = -log softmax(logits[i])[targets[i]] (0 where targets[i] == ignore_index).  \
     With dloss != 0 it OVERWRITES logits with d(sum_i dloss*losses[i])/dlogits, 0 in the padded    \
     columns and on ignored rows. Probabilities never go to memory. */                              \
  X(void, crossentropy_forward_backward, (float* logits /*(N,Vp) in: logits, out: dlogits*/,        \
                                          float* losses /*(N)*/, const int* targets /*(N)*/, int N, \
                                          int V, int Vp, float dloss, int ignore_index))             \
  /* The vocabulary-parallel cross-entropy (Megatron-LM), crossentropy_forward_backward split into   \
     three phases around the model's collectives. This rank's logits (N,Vl) are the columns          \
     [v0, v0+Vl) of the padded vocabulary; those below V are real. (1) shard_max: mx = each row's    \
     max over the shard's real columns (-inf where it has none); the model all-gathers mx into mxs.  \
     (2) shard_sums: mx = the max over the ranks of mxs; sums[i] = the sum of exp(logit - mx[i])     \
     over the shard's real columns, sums[N+i] = the target's logit where the shard holds it, else 0  \
     (both 0 on ignored rows); the model all-reduces sums. (3) shard_finish: losses, and with        \
     dloss != 0 the shard's dlogits written over its logits, as crossentropy_forward_backward does. */ \
  X(void, crossentropy_shard_max, (float* mx /*(N)*/, const float* logits /*(N,Vl)*/, int N, int V,  \
                                   int v0, int Vl))                                                  \
  X(void, crossentropy_shard_sums, (float* sums /*(2,N)*/, float* mx /*(N)*/, const float* mxs /*(TP,N)*/, \
                                    const float* logits /*(N,Vl)*/, const int* targets /*(N)*/, int N, \
                                    int TP, int V, int v0, int Vl, int ignore_index))                \
  X(void, crossentropy_shard_finish, (float* logits /*(N,Vl) in: logits, out: dlogits*/,             \
                                      float* losses /*(N)*/, const float* mx /*(N)*/,                \
                                      const float* sums /*(2,N)*/, const int* targets /*(N)*/, int N, \
                                      int V, int v0, int Vl, float dloss, int ignore_index))         \
  /* Fused AdamW with decoupled weight decay: p -= lr*(mhat/(sqrt(vhat)+eps) + wd*p), where the    \
     gradient is grads*grad_scale (clipping) and t is the 1-based step for the bias correction. */  \
  X(void, adamw_update, (float* params /*(n)*/, const float* grads /*(n)*/, float* m /*(n)*/,       \
                         float* v /*(n)*/, size_t n, float lr, float beta1, float beta2, float eps,  \
                         float weight_decay, float grad_scale, int t))                               \
  /* sum of g[i]^2 over the ranges (host memory), accumulated in double: one call for all of a    \
     model's gradient tensors (cuda: one copy back to the host, not one per tensor) */              \
  X(double, global_norm_squared, (const float* g, const kernels::IndexRange* ranges, int count))     \
  /* relu(x)^2 */                                                                                    \
  X(void, relu2_forward, (float* out /*(N)*/, const float* inp /*(N)*/, int N))                      \
  X(void, relu2_backward, (float* dinp /*(N), written; may be dout*/, const float* inp /*(N)*/,     \
                           const float* dout /*(N)*/, int N))                                        \
  /* Partial RoPE on interleaved pairs: for i < R/2, dims (2i, 2i+1) of every head turn by angle    \
     (pos0+t) * base^rope_exponent(i, R, variant) (computed in double); dims [R,hs) pass through, R  \
     0 all of them (NoPE). kvmtrain turns (x0,x1) to (x0 c - x1 s, x0 s + x1 c); paper the other    \
     way, to (x0 c + x1 s, x1 c - x0 s). Token (b,t) holds NH heads of hs floats from              \
     ptr + (b*T+t)*ld. Forward: out may equal inp. Backward: dinp += R^T dout (dinp != dout). */    \
  X(void, rope_forward, (float* out, const float* inp, int B, int T, int NH, int hs, int ld, int R,  \
                         float base, int pos0, kernels::RopeVariant variant))                        \
  X(void, rope_backward, (float* dinp, const float* dout, int B, int T, int NH, int hs, int ld,      \
                          int R, float base, int pos0, kernels::RopeVariant variant))                \
  /* ---- the paper's backbone (docs/kvm.md section 12) ---- */                                      \
  /* out = inp1 + scale*inp2 (a sub-block's output added to the residual stream). No backward:    \
     the stream's gradient passes through, and the model scales the sub-block's with axpby_rows. */ \
  X(void, scaled_residual_forward, (float* out /*(N)*/, const float* inp1 /*(N)*/,                   \
                                    const float* inp2 /*(N)*/, float scale, int N))                  \
  /* merge gate 1 + elu(x) > 0 */                                                                    \
  X(void, elu_gate_forward, (float* out /*(N)*/, const float* inp /*(N)*/, int N))                   \
  X(void, elu_gate_backward, (float* dinp /*(N)*/, const float* inp /*(N)*/,                         \
                              const float* dout /*(N)*/, int N))                                     \
  /* Token shift, one weight w per channel, in three forms (kernels::TokenShiftForm):                \
     mix_zero (model.token_shift, RWKV-4): out[b,t] = w*inp[b,t] + (1-w)*inp[b,t-1];                 \
     delta_zero, delta_first (the paper's MLP and q/k/v shifts): out[b,t] = inp[b,t] +               \
     w*(inp[b,t-1] - inp[b,t]). The row before t = 0 is prev[b] (decode); without prev it is zero,   \
     or for delta_first inp[b,0] itself (out[b,0] = inp[b,0]). The backward takes prev as nullptr    \
     and gives it no gradient. */                                                                    \
  X(void, token_shift_forward, (float* out /*(B,T,C)*/, const float* inp /*(B,T,C)*/,                \
                                const float* prev /*(B,C) or nullptr*/, const float* w /*(C)*/,      \
                                int B, int T, int C, kernels::TokenShiftForm form))                  \
  X(void, token_shift_backward, (float* dinp /*(B,T,C)*/, float* dw /*(C)*/,                         \
                                 const float* dout /*(B,T,C)*/, const float* inp /*(B,T,C)*/,        \
                                 const float* w /*(C)*/, int B, int T, int C,                        \
                                 kernels::TokenShiftForm form))                                      \
  /* The paper's value residual: v moves towards an anchor (layer 0's v) by a gate,                  \
     out = v + (anchor - v)*gate, gate = w[0] (linear) or sigmoid(w[c] + z[n,c]) (rwkv, z a          \
     per-token projection). Row n of out, v, dv, dout lies at ptr + n*ld; anchor, z, danchor, dz     \
     are dense (N,C). out must not alias v, nor dv dout. Backward: dv and dz written (dz nullptr     \
     for linear), danchor and dw accumulated; dw sums over every token (and channel, for linear)     \
     in a fixed order. */                                                                            \
  X(void, value_residual_forward, (float* out, int ld_out, const float* v, int ld_v,                 \
                                   const float* anchor /*(N,C)*/, const float* z /*(N,C) or nullptr*/, \
                                   const float* w /*(C) rwkv, (1) linear*/, int N, int C,            \
                                   kernels::ValueResidualMode mode))                                 \
  X(void, value_residual_backward, (float* dv, int ld_dv, float* danchor /*(N,C)*/,                  \
                                    float* dz /*(N,C) or nullptr*/, float* dw /*(C) rwkv, (1) linear*/, \
                                    const float* dout, int ld_dout, const float* v, int ld_v,        \
                                    const float* anchor /*(N,C)*/, const float* z /*(N,C) or nullptr*/, \
                                    const float* w, int N, int C, kernels::ValueResidualMode mode))  \
  /* LayerNorm over each head's hs dims (qk-norm), eps 1e-5, weight/bias shared by the heads. Row   \
     n (a token) holds NH heads of hs floats from inp + n*ld (out likewise); mean, rstd (N*NH).     \
     out may equal inp. */                                                                           \
  X(void, head_layernorm_forward, (float* out, float* mean /*(N*NH)*/, float* rstd /*(N*NH)*/,      \
                                   const float* inp, const float* weight /*(hs)*/,                   \
                                   const float* bias /*(hs)*/, int N, int NH, int hs, int ld))       \
  X(void, head_layernorm_backward, (float* dinp, float* dweight /*(hs)*/, float* dbias /*(hs)*/,     \
                                    const float* dout, const float* inp, const float* weight,        \
                                    const float* mean, const float* rstd, int N, int NH, int hs,     \
                                    int ld))                                                         \
  /* ---- bf16 mixed precision (kernels/bf16.h) ---- */                                              \
  /* matmul_forward/backward with the bf16 copy of the weight: inp and dout are rounded to bf16    \
     (nearest even) inside, the products accumulate in fp32, out, dinp, dweight and dbias are fp32  \
     with the same conventions as the fp32 kernels (dbias sums the fp32 dout). */                   \
  X(void, matmul_forward_bf16, (float* out /*(N,OC)*/, const float* inp /*(N,IC)*/,                 \
                                const kernels::bf16* weight /*(OC,IC)*/,                              \
                                const float* bias /*(OC) or nullptr*/, int N, int IC, int OC))       \
  X(void, matmul_backward_bf16, (float* dinp /*(N,IC) or nullptr*/, float* dweight /*(OC,IC)*/,     \
                                 float* dbias /*(OC) or nullptr*/, const float* dout /*(N,OC)*/,     \
                                 const float* inp /*(N,IC)*/, const kernels::bf16* weight /*(OC,IC)*/, \
                                 int N, int IC, int OC, bool accumulate_dinp, bool accumulate_dweight)) \
  /* The GPT-2 MLP's first layer fused with its GELU: pre = inp @ weight^T + bias, out =          \
     gelu(pre), pre kept for the backward (CUDA: cuBLASLt's GELU_AUX_BIAS epilogue, tanh GELU).      \
     On CUDA OC must be a multiple of 8 (the auxiliary leading dimension). */                       \
  X(void, matmul_gelu_forward, (float* out /*(N,OC)*/, float* pre /*(N,OC)*/, const float* inp /*(N,IC)*/, \
                                const float* weight /*(OC,IC)*/, const float* bias /*(OC) or nullptr*/, \
                                int N, int IC, int OC))                                              \
  X(void, matmul_gelu_forward_bf16, (float* out /*(N,OC)*/, float* pre /*(N,OC)*/,                   \
                                     const float* inp /*(N,IC)*/, const kernels::bf16* weight /*(OC,IC)*/, \
                                     const float* bias /*(OC) or nullptr*/, int N, int IC, int OC))  \
  /* out[i] = inp[i] rounded to bf16 stochastically with the random bits                            \
     stochastic_round_bits(seed, step, offset + i): offset is inp's global element index. */         \
  X(void, bf16_round_stochastic, (kernels::bf16* out /*(n)*/, const float* inp /*(n)*/, size_t n,    \
                                  uint64_t seed, uint64_t step, uint64_t offset))                   \
  /* ---- data movement between the trainer's layouts (kernels/cpu/layout.cpp) ---- */               \
  /* Token rows (B,T) of NH heads of hs floats at row stride ld -> (B,NH,T,hs), the KVM core's     \
     layout; merge_heads goes back, accumulate != 0 adding (gradients) instead of writing. */       \
  X(void, split_heads, (float* out /*(B,NH,T,hs)*/, const float* inp /*(B,T,ld)*/, int B, int T,    \
                        int NH, int hs, int ld))                                                     \
  X(void, merge_heads, (float* out /*(B,T,ld)*/, const float* inp /*(B,NH,T,hs)*/, int B, int T,    \
                        int NH, int hs, int ld, int accumulate))                                     \
  /* out[n*ldo+c] = a*out[n*ldo+c] + b*inp[n*ldi+c] for n < N, c < C: an axpby over strided rows    \
     (the value residual on qkv's v columns, gradient scaling, bias adds). a == 0 does not read     \
     out (BLAS's beta = 0); ldi 0 repeats one row of inp (a bias). out may equal inp. */            \
  X(void, axpby_rows, (float* out, const float* inp, float a, float b, size_t N, int C, size_t ldo,  \
                       size_t ldi))

#define KVM_DECLARE_KERNEL(ret, name, params) ret name params;

namespace kernels {
// token_shift_forward/backward's forms and value_residual_forward/backward's gates, see there.
enum class TokenShiftForm { mix_zero, delta_zero, delta_first };
enum class ValueResidualMode { linear, rwkv };

// The real columns of the vocabulary shard [v0, v0+Vl): those below V (none in a shard of padding
// only). The crossentropy_shard_* kernels of both backends take their columns from it.
inline int vocab_shard_real_columns(int V, int v0, int Vl) { return V - v0 < 0 ? 0 : V - v0 > Vl ? Vl : V - v0; }

// The attention kernels' window arguments, checked by both twins: window, block >= 0 and, for a
// block sliding window (both > 0), window a multiple of block.
inline void attention_check_window(int window, int block) {
  if (window < 0 || block < 0)
    throw std::invalid_argument("attention: expected window >= 0 and block >= 0, got window=" +
                                std::to_string(window) + " block=" + std::to_string(block));
  if (window > 0 && block > 0 && window % block != 0)
    throw std::invalid_argument("attention: a block sliding window needs window=" + std::to_string(window) +
                                " to be a multiple of block=" + std::to_string(block));
}

// The first key query t sees, shared by both twins (host and device): 0 (window 0), t-window+1
// (sliding window, block 0), or the start of the window/block - 1 chunks before t's own chunk
// (block sliding window); never below 0. Nondecreasing in t, so a tile's first query has its first key.
KVM_HOST_DEVICE inline int attention_first_key(int t, int window, int block) {
  const int first = window == 0 ? 0 : block == 0 ? t - window + 1 : (t / block + 1) * block - window;
  return first > 0 ? first : 0;
}

// The first key attention_decode's token at pos sees, after the checks both twins make: the keys
// [first, pos] must occupy distinct slots of the ring of cap, so that writing slot pos % cap
// overwrites none of them.
inline int attention_decode_first_key(int C, int NH, int pos, int cap, int window, int block) {
  if (NH <= 0 || C % NH != 0)
    throw std::invalid_argument("attention_decode: C=" + std::to_string(C) + " is not a multiple of NH=" +
                                std::to_string(NH));
  if (pos < 0) throw std::invalid_argument("attention_decode: expected pos >= 0");
  attention_check_window(window, block);
  const int first = attention_first_key(pos, window, block);
  if (cap < pos - first + 1)
    throw std::invalid_argument("attention_decode: a cache of cap=" + std::to_string(cap) + " slots cannot hold the " +
                                std::to_string(pos - first + 1) + " keys of position " + std::to_string(pos) +
                                (window > 0 ? " (a sliding window needs cap >= window=" + std::to_string(window) + ")"
                                            : " (full attention needs cap >= pos+1)"));
  return first;
}
}  // namespace kernels

namespace kernels::cpu {
KVM_KERNELS_ALL_BACKENDS(KVM_DECLARE_KERNEL)
}  // namespace kernels::cpu

namespace kernels::cuda {
KVM_KERNELS_ALL_BACKENDS(KVM_DECLARE_KERNEL)
// Visible CUDA devices; 0, without throwing, where there is no driver or no GPU.
int device_count();
}  // namespace kernels::cuda
