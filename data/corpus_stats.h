#pragma once
// The unigram entropy of a token stream: the loss of the best model that ignores context, the
// bar a trained model's validation loss must clear to have learned anything beyond frequencies.
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config/config.h"

struct UnigramEntropy {
  double nats = 0;      // per token
  uint64_t tokens = 0;  // how many were counted
};

// Streams the shards of `sources` (at most `max_tokens` of them, in order) and returns the
// entropy of their token frequencies.
UnigramEntropy unigram_entropy(const std::vector<config::DataSource>& sources, const std::string& tokenizer,
                               int vocab_size, uint64_t max_tokens);
