#pragma once
// Multi-query associative recall (MQAR, the Zoology work's task): the synthetic examples of
// `kvmtrain prepare --synthetic mqar`, exactly as docs/recall.md specifies them, so that any other
// tool can generate the same ones (tests/reference/mqar_ref.py is such a tool).
//
// An example is T+1 tokens of a vocabulary of V (even) ids: 0 is filler, keys are [1, V/2), values
// [V/2, V). N pairs k_1 v_1 ... k_N v_N at positions 0..2N-1 (distinct keys, values uniform with
// replacement); then each key once more, in random order, immediately followed by its value, at N
// distinct even positions q in [first_query_slot, T-1); every other position is 0. The loss mask
// is 1 exactly at q+1 (predicting the value from the tokens up to the repeated key). A query's gap
// is q minus its key's pair position (2i for key i); with min_gap G the query slots start at
// max(2N, 2(N-1)+G) rounded up to even, so that every gap, the last pair's included, is >= G.
#include <cstdint>

#include "common/rng.h"

namespace data {

struct MqarSpec {
  int vocab;    // V: even, >= 4
  int seq_len;  // T: an example is T+1 tokens
  int pairs;    // N: 1 <= N <= V/2 - 1
  int min_gap = 0;  // G >= 0
};

// The first even position a query may take: max(2N, 2(N-1)+G), rounded up to even.
int mqar_first_query_slot(const MqarSpec& spec);

// Throws UsageError naming the flag (--vocab, --pairs, --seq-len, --min-gap) whose value makes
// the task impossible: V odd or < 4 or > 65536, N outside [1, V/2-1], G < 0, fewer than N even
// slots in [first_query_slot, T-1).
void check_mqar(const MqarSpec& spec);

// One example from `rng` (the draws docs/recall.md lists, in its order): tokens and mask [T+1].
void mqar_example(const MqarSpec& spec, Rng& rng, uint32_t* tokens, uint8_t* mask);

// The state the validation examples' generator starts from: seed XOR "val-mqar" as 8 ASCII
// bytes, so that its stream is independent of the training one (whose state starts at seed).
inline uint64_t mqar_val_seed(uint64_t seed) { return seed ^ 0x76616C2D6D716172ull; }

}  // namespace data
