#pragma once
// Megatron-style tensor parallelism: helpers around the sharded parameter table. Model (model.h)
// takes the tensor-parallel communicator and lays out only this rank's shards; each sharded
// TensorView says how (tensor_table.h: shard_dim, shard_count, shard_rank, shard_blocks), so that
// checkpoints and export can gather full tensors and a full tensor can be split for any rank.
// What is sharded how: docs/distributed.md, "Tensor parallel inside the model".
#include <cstddef>
#include <vector>

#include "trainer/parallel/communicator.h"
#include "common/tensor_table.h"

namespace tp {

bool is_sharded(const TensorView& v);  // shard_dim >= 0 and shard_count > 1
std::vector<int> full_shape(const TensorView& v);
size_t full_size(const TensorView& v);

// Calls f(shard index, full index, run length) for every contiguous run of the shard of `rank`
// (a replicated view: one run, the whole tensor).
template <class F>
void for_each_run(const TensorView& v, int rank, F f) {
  if (!is_sharded(v)) {
    f(size_t(0), size_t(0), v.size);
    return;
  }
  const size_t d = size_t(v.shard_dim);
  size_t outer = 1, inner = 1;
  for (size_t i = 0; i < d; i++) outer *= size_t(v.shape[i]);
  for (size_t i = d + 1; i < v.shape.size(); i++) inner *= size_t(v.shape[i]);
  const size_t local = size_t(v.shape[d]), full = local * size_t(v.shard_count);
  const size_t blk_local = local / size_t(v.shard_blocks), blk_full = full / size_t(v.shard_blocks);
  for (size_t o = 0; o < outer; o++)
    for (size_t b = 0; b < size_t(v.shard_blocks); b++) {
      size_t src = (o * local + b * blk_local) * inner;
      size_t dst = (o * full + b * blk_full + size_t(rank) * blk_local) * inner;
      f(src, dst, blk_local * inner);
    }
}

// full (full_size(v)) -> the shard (v.size) of rank `rank` (v.shard_rank when rank < 0).
void extract(const TensorView& v, const float* full, float* shard, int rank = -1);
// The shard (v.size) of rank `rank` -> its place in full (full_size(v)); the rest is untouched.
void insert(const TensorView& v, const float* shard, float* full, int rank);

// Collective over the tensor-parallel communicator `comm` (whose ranks hold the shards of one
// table layout): the full tensor of view v, whose shard starts at base + v.offset on every rank.
// Replicated views are returned as they are.
std::vector<float> gather(Communicator& comm, const TensorView& v, const float* base);

// Collective: the sum of squares of buf (a parameter or gradient allocation in table's layout)
// over the whole model, each element counted once: shards from every rank, replicated tensors
// once (they are equal on every rank). comm may be null (one rank).
double norm_squared(Communicator* comm, const TensorTable& table, const float* buf);

}  // namespace tp
