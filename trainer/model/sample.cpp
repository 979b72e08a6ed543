#include "trainer/model/sample.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

LogitsSource::LogitsSource(Model& model, int max_context, bool cache)
    : model_(model), max_context_(max_context), cache_(cache) {}

const float* LogitsSource::next(const std::vector<int>& tokens) {
  if (!cache_) {
    const int T = std::min<int>(int(tokens.size()), max_context_);
    model_.forward(tokens.data() + tokens.size() - T, 1, T);
    return model_.logits_host(size_t(T - 1), 1, host_logits_);
  }
  if (fed_ == 0) model_.reset_decode();
  if (tokens.size() > size_t(model_.cfg().max_seq_len))
    throw std::runtime_error("decode cache: the sequence exceeds model.max_seq_len " +
                             std::to_string(model_.cfg().max_seq_len));
  for (; fed_ < tokens.size(); fed_++) last_ = model_.step(tokens[fed_]);
  return last_;
}

int sample_next(const float* logits, int V, const SampleOptions& o, Rng& rng) {
  int best = int(std::max_element(logits, logits + V) - logits);
  if (o.temperature <= 0) return best;
  std::vector<double> probs(V);
  double maxv = logits[best], sum = 0;
  for (int v = 0; v < V; v++) sum += probs[v] = std::exp((logits[v] - maxv) / o.temperature);
  if (o.top_k > 0 || o.top_p < 1.0f) {
    // the kept set: most likely first, cut at k tokens and at cumulative probability p
    std::vector<int> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return probs[a] > probs[b]; });
    size_t keep = o.top_k > 0 ? std::min<size_t>(size_t(o.top_k), order.size()) : order.size();
    double acc = 0;
    for (size_t i = 0; i < keep; i++) {
      acc += probs[order[i]] / sum;
      if (acc >= o.top_p) {
        keep = i + 1;
        break;
      }
    }
    for (size_t i = keep; i < order.size(); i++) probs[order[i]] = 0;
    sum = 0;
    for (int v = 0; v < V; v++) sum += probs[v];
  }
  double u = rng.uniform() * sum, acc = 0;
  int next = 0;
  for (; next < V - 1; next++) {
    acc += probs[next];
    if (acc > u) break;
  }
  return next;
}

void sample_tokens(Model& model, std::vector<int>& tokens, int n, int max_context, float temperature, Rng& rng) {
  const size_t fed = tokens.size() + size_t(std::max(n, 1)) - 1;  // tokens through the model
  const bool cache = fed <= size_t(std::min(max_context, model.cfg().max_seq_len));
  LogitsSource source(model, max_context, cache);
  SampleOptions o;
  o.temperature = temperature;
  for (int i = 0; i < n; i++) tokens.push_back(sample_next(source.next(tokens), model.cfg().vocab_size, o, rng));
}
