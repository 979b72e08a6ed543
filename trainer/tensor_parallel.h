#pragma once
// Megatron-style tensor parallelism: helpers around the sharded parameter table. Model (model.h)
// takes the tensor-parallel communicator and lays out only this rank's shards; each sharded
// TensorView says how (tensor_table.h: shard_dim, shard_count, shard_rank, shard_blocks), so that
// checkpoints and export can gather full tensors and a full tensor can be split for any rank.
// What is sharded how: docs/decisions.md, "Tensor parallel".
#include <cstddef>
#include <vector>

#include "trainer/communicator.h"
#include "trainer/tensor_table.h"

namespace tp {

bool is_sharded(const TensorView& v);  // shard_dim >= 0 and shard_count > 1
std::vector<int> full_shape(const TensorView& v);
size_t full_size(const TensorView& v);

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
