#pragma once
// Autoregressive sampling from a model (no cache yet: each token re-runs the context, at most
// the model's allocated T tokens, as llm.c's trainer does for its end-of-run sample).
#include <vector>

#include "trainer/model.h"
#include "trainer/rng.h"

// Appends `n` tokens to `tokens` (which holds the prompt, at least one id), sampling from
// softmax(logits / temperature) over the real vocabulary; temperature 0 takes the argmax.
void sample_tokens(Model& model, std::vector<int>& tokens, int n, int max_context, float temperature, Rng& rng);
