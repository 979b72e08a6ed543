#include "data/corpus_stats.h"

#include <algorithm>
#include <cmath>

#include "data/shard.h"

UnigramEntropy unigram_entropy(const std::vector<config::DataSource>& sources, const std::string& tokenizer,
                               int vocab_size, uint64_t max_tokens) {
  std::vector<uint64_t> counts(size_t(vocab_size), 0);
  std::vector<uint16_t> buf(1 << 20);
  UnigramEntropy r;
  for (const auto& src : sources) {
    for (const auto& path : data::list_shards(src.path)) {
      data::ShardReader shard(path, tokenizer, vocab_size);
      for (uint64_t off = 0; off < shard.size() && r.tokens < max_tokens;) {
        size_t n = size_t(std::min<uint64_t>({buf.size(), shard.size() - off, max_tokens - r.tokens}));
        shard.read(off, n, buf.data());
        for (size_t i = 0; i < n; i++) counts[buf[i]]++;
        off += n;
        r.tokens += n;
      }
    }
  }
  for (uint64_t c : counts)
    if (c) {
      double p = double(c) / double(r.tokens);
      r.nats -= p * std::log(p);
    }
  return r;
}
