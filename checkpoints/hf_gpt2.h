#pragma once
// Tensor names and layouts between kvmtrain and Hugging Face's GPT2LMHeadModel.
// kvmtrain stores linear weights (out, in) and the token embedding with padded vocabulary rows;
// GPT-2's Conv1D stores (in, out) and its embedding has exactly vocab_size rows. So export
// transposes qkv/proj/fc weights and drops the padding rows; import is the exact inverse.
#include <cstdint>
#include <vector>

#include "checkpoints/safetensors.h"

namespace ckpt {

// kvmtrain names (wte, wpe, h.{l}.ln_1.weight, h.{l}.attn.qkv.weight, ...) -> transformer.wte.weight,
// transformer.h.{l}.attn.c_attn.weight (transposed), ...; lm_head.weight (an untied head) kept.
// A name outside the GPT-2 map throws: the caller checked that the model is a pure GPT-2.
std::vector<NamedTensor> gpt2_to_hf(const std::vector<NamedTensor>& ours, int64_t vocab_size);

// The inverse: HF names (with or without the "transformer." prefix; attention-mask buffers
// ignored) -> kvmtrain names and layouts, embedding rows padded with zeros to padded_vocab.
std::vector<NamedTensor> gpt2_from_hf(const std::vector<NamedTensor>& hf, int64_t padded_vocab);

// Our own names (the generic export of backbone models): only the vocabulary padding of wte and
// lm_head is dropped (export) or restored with zeros (import).
std::vector<NamedTensor> drop_vocab_padding(const std::vector<NamedTensor>& ours, int64_t vocab_size);
std::vector<NamedTensor> restore_vocab_padding(const std::vector<NamedTensor>& exported, int64_t padded_vocab);

// True when `tensors` use HF GPT-2 names (a file from export or from the Hugging Face hub).
bool has_hf_gpt2_names(const std::vector<NamedTensor>& tensors);

}  // namespace ckpt
