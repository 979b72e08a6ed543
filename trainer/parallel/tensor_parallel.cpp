#include "trainer/parallel/tensor_parallel.h"

#include <cstring>

namespace tp {

bool is_sharded(const TensorView& v) { return v.shard_dim >= 0 && v.shard_count > 1; }

std::vector<int> full_shape(const TensorView& v) {
  std::vector<int> s = v.shape;
  if (is_sharded(v)) s[size_t(v.shard_dim)] *= v.shard_count;
  return s;
}

size_t full_size(const TensorView& v) { return is_sharded(v) ? v.size * size_t(v.shard_count) : v.size; }

void extract(const TensorView& v, const float* full, float* shard, int rank) {
  if (rank < 0) rank = v.shard_rank;
  for_each_run(v, rank, [&](size_t s, size_t f, size_t n) { std::memcpy(shard + s, full + f, n * sizeof(float)); });
}

void insert(const TensorView& v, const float* shard, float* full, int rank) {
  for_each_run(v, rank, [&](size_t s, size_t f, size_t n) { std::memcpy(full + f, shard + s, n * sizeof(float)); });
}

std::vector<float> gather(Communicator& comm, const TensorView& v, const float* base) {
  const float* mine = base + v.offset;
  if (!is_sharded(v)) return std::vector<float>(mine, mine + v.size);
  const int n = comm.size();
  std::vector<float> all(v.size * size_t(n)), full(full_size(v));
  comm.all_gather(mine, all.data(), v.size);
  for (int r = 0; r < n; r++) insert(v, all.data() + v.size * size_t(r), full.data(), r);
  return full;
}

double norm_squared(Communicator* comm, const TensorTable& table, const float* buf) {
  const bool first = !comm || comm->rank() == 0;
  double sum = 0;
  for (const auto& v : table.views()) {
    if (!is_sharded(v) && !first) continue;
    for (size_t i = 0; i < v.size; i++) sum += double(buf[v.offset + i]) * buf[v.offset + i];
  }
  if (comm && comm->size() > 1) {
    // the communicator sums floats: split the double into a high and a low part
    float parts[2] = {float(sum), float(sum - double(float(sum)))};
    comm->all_reduce_sum(parts, 2);
    sum = double(parts[0]) + double(parts[1]);
  }
  return sum;
}

}  // namespace tp
