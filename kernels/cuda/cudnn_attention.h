#pragma once
// Causal attention, full or sliding-window, through cuDNN's fused flash attention
// (train.attention_backend: cudnn; kernels/cuda/cudnn_attention.cu). The same contract as
// attention_forward / attention_backward in kernels/kernels.h: fp32 in and out, window 0: query t
// sees keys [0,t], window > 0: keys (t-window, t], scale 1/sqrt(hs), lse the natural-log
// logsumexp of the scaled scores, dqkv accumulated. cuDNN's fused attention takes bf16, so q, k, v
// (and out, dout in the backward) are rounded to bf16 (nearest even) on the way in and the bf16
// outputs widened on the way out: it is for train.precision: bf16. Needs an sm_80+ GPU, cuDNN 9
// (not 9.10.0/9.10.1) and hs a multiple of 8, at most 128; lse 16-byte aligned. Plain C++
// declarations, so host code may include it.
namespace kernels::cuda {

void cudnn_attention_forward(float* out /*(B,T,C)*/, float* lse /*(B,NH,T)*/, const float* qkv /*(B,T,3C)*/, int B,
                             int T, int C, int NH, int window);
void cudnn_attention_backward(float* dqkv /*(B,T,3C)*/, const float* dout /*(B,T,C)*/, const float* qkv /*(B,T,3C)*/,
                              const float* out /*(B,T,C)*/, const float* lse /*(B,NH,T)*/, int B, int T, int C,
                              int NH, int window);

}  // namespace kernels::cuda
