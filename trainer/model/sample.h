#pragma once
// Autoregressive sampling from a model. Next-token logits come from a LogitsSource, the one place
// that chooses how: recompute the whole context (at most max_context tokens) for every token, as
// llm.c's trainer does, or feed one token at a time through Model::step's decode caches.
#include <vector>

#include "trainer/model/model.h"
#include "common/rng.h"

struct SampleOptions {
  float temperature = 1.0f;  // 0: greedy (argmax)
  int top_k = 0;             // keep the k most likely tokens; 0: all
  float top_p = 1.0f;        // keep the smallest set whose probability reaches p; 1: all
};

class LogitsSource {
 public:
  // cache = false: recompute; true: Model::step (decode caches, at most model max_seq_len tokens).
  LogitsSource(Model& model, int max_context, bool cache);
  // The logits (padded vocabulary) of the token after `tokens` (which only ever grows).
  const float* next(const std::vector<int>& tokens);

 private:
  Model& model_;
  int max_context_;
  bool cache_;
  size_t fed_ = 0;  // tokens already in the decode caches
  const float* last_ = nullptr;
  std::vector<float> host_logits_;  // recompute on cuda: the last row, copied to the host
};

// A token drawn from softmax(logits[0..V) / temperature) restricted by top_k and top_p.
int sample_next(const float* logits, int V, const SampleOptions& o, Rng& rng);

// Appends `n` tokens to `tokens` (which holds the prompt, at least one id); temperature 0 takes
// the argmax. Through the decode caches (one token's work per token; recomputing would rebuild
// every length's attention, on cuda a new cuDNN graph each) when the whole sequence fits in
// max_context and model.max_seq_len, else recomputing the last max_context tokens.
void sample_tokens(Model& model, std::vector<int>& tokens, int n, int max_context, float temperature, Rng& rng);
