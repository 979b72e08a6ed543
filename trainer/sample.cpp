#include "trainer/sample.h"

#include <algorithm>
#include <cmath>

void sample_tokens(Model& model, std::vector<int>& tokens, int n, int max_context, float temperature, Rng& rng) {
  const int V = model.cfg().vocab_size, Vp = model.cfg().padded_vocab_size;
  std::vector<double> probs(V);
  for (int i = 0; i < n; i++) {
    int T = std::min<int>(int(tokens.size()), max_context);
    const int* context = tokens.data() + tokens.size() - T;
    model.forward(context, 1, T);
    const float* logits = model.logits() + size_t(T - 1) * Vp;
    int next = int(std::max_element(logits, logits + V) - logits);
    if (temperature > 0) {
      double maxv = logits[next], sum = 0;
      for (int v = 0; v < V; v++) sum += probs[v] = std::exp((logits[v] - maxv) / temperature);
      double u = rng.uniform() * sum, acc = 0;
      for (next = 0; next < V - 1; next++) {
        acc += probs[next];
        if (acc > u) break;
      }
    }
    tokens.push_back(next);
  }
}
