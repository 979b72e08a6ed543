#include "data/mqar.h"

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "common/usage_error.h"

namespace data {

namespace {

// Uniform in [0, n): one 64-bit draw modulo n (a bias below n / 2^64; simple to reproduce).
uint64_t draw_below(Rng& rng, uint64_t n) { return rng.next_u64() % n; }

// The first k entries of `pool` become a uniform random k-subset in random order: a forward
// partial Fisher-Yates shuffle, one draw per entry (the last a draw_below(1) when k = size).
template <class T>
void partial_shuffle(std::vector<T>& pool, size_t k, Rng& rng) {
  for (size_t i = 0; i < k; i++) std::swap(pool[i], pool[i + draw_below(rng, pool.size() - i)]);
}

int query_slots(const MqarSpec& s) {
  const int first = mqar_first_query_slot(s), end = s.seq_len - 1;  // even q with first <= q < T-1
  return end > first ? (end - first + 1) / 2 : 0;
}

}  // namespace

int mqar_first_query_slot(const MqarSpec& s) {
  const int first = std::max(2 * s.pairs, 2 * (s.pairs - 1) + s.min_gap);
  return first + first % 2;
}

void check_mqar(const MqarSpec& s) {
  const std::string V = std::to_string(s.vocab), N = std::to_string(s.pairs);
  if (s.vocab < 4 || s.vocab % 2 != 0 || s.vocab > 65536)
    throw UsageError("prepare: --vocab " + V + ": expected an even number in [4, 65536] (keys are [1, V/2), values [V/2, V))");
  if (s.pairs < 1 || s.pairs > s.vocab / 2 - 1)
    throw UsageError("prepare: --pairs " + N + ": expected 1 to V/2 - 1 = " + std::to_string(s.vocab / 2 - 1) +
                     " (the keys are distinct ids in [1, V/2) of --vocab " + V + ")");
  if (s.min_gap < 0) throw UsageError("prepare: --min-gap " + std::to_string(s.min_gap) + ": expected >= 0");
  if (s.seq_len < 1 || query_slots(s) < s.pairs)
    throw UsageError("prepare: --seq-len " + std::to_string(s.seq_len) + ": too short for --pairs " + N +
                     " with --min-gap " + std::to_string(s.min_gap) + ": the queries need " + N +
                     " even positions in [" + std::to_string(mqar_first_query_slot(s)) + ", T-1), there are " +
                     std::to_string(std::max(0, query_slots(s))));
}

void mqar_example(const MqarSpec& s, Rng& rng, uint32_t* tokens, uint8_t* mask) {
  const size_t N = size_t(s.pairs);
  const uint32_t half = uint32_t(s.vocab / 2);
  std::vector<uint32_t> keys(half - 1);  // 1, 2, ..., V/2 - 1
  std::iota(keys.begin(), keys.end(), 1u);
  partial_shuffle(keys, N, rng);
  std::vector<uint32_t> values(N);
  for (auto& v : values) v = half + uint32_t(draw_below(rng, half));
  std::vector<int> slots(size_t(query_slots(s)));
  for (size_t j = 0; j < slots.size(); j++) slots[j] = mqar_first_query_slot(s) + 2 * int(j);
  partial_shuffle(slots, N, rng);
  std::sort(slots.begin(), slots.begin() + ptrdiff_t(N));
  std::vector<size_t> order(N);  // the pair asked at the k-th query slot
  std::iota(order.begin(), order.end(), size_t(0));
  partial_shuffle(order, N, rng);

  std::fill(tokens, tokens + s.seq_len + 1, 0u);
  std::fill(mask, mask + s.seq_len + 1, uint8_t(0));
  for (size_t i = 0; i < N; i++) tokens[2 * i] = keys[i], tokens[2 * i + 1] = values[i];
  for (size_t k = 0; k < N; k++) {
    const size_t q = size_t(slots[k]);
    tokens[q] = keys[order[k]];
    tokens[q + 1] = values[order[k]];
    mask[q + 1] = 1;
  }
}

}  // namespace data
