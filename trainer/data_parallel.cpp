#include "trainer/data_parallel.h"

#include <algorithm>
#include <cstring>

namespace {

// Ranges of 64-byte multiples, so that every rank's range starts on a cache line.
size_t shard_size(size_t total, int ranks) { return ((total + ranks - 1) / ranks + 15) / 16 * 16; }

}  // namespace

DataParallel::DataParallel(Communicator& dp, const TensorTable& table, const config::TrainConfig& cfg)
    : comm_(dp),
      total_(table.total()),
      shard_(shard_size(table.total(), dp.size())),
      opt_(table, cfg, std::min(total_, size_t(dp.rank()) * shard_), std::min(total_, size_t(dp.rank() + 1) * shard_)) {
  if (comm_.size() > 1) {
    send_.resize(shard_);
    recv_.resize(shard_ * comm_.size());
  }
}

float DataParallel::mean(float local) {
  comm_.all_reduce_sum(&local, 1);
  return local / float(comm_.size());
}

void DataParallel::average_gradients(float* grads) {
  if (comm_.size() == 1) return;
  comm_.all_reduce_sum(grads, total_);
  const float inv = 1.0f / float(comm_.size());
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < total_; i++) grads[i] *= inv;
}

void DataParallel::gather(const float* full_in_range, float* full_out) {
  std::fill(send_.begin(), send_.end(), 0.0f);
  const size_t n = opt_.end() - opt_.begin();
  std::memcpy(send_.data(), full_in_range + opt_.begin(), n * sizeof(float));
  comm_.all_gather(send_.data(), recv_.data(), shard_);
  std::memcpy(full_out, recv_.data(), total_ * sizeof(float));
}

void DataParallel::step(float* params, const float* grads, float lr, float grad_scale) {
  opt_.step(params, grads, lr, grad_scale);
  if (comm_.size() > 1) gather(params, params);
}

void DataParallel::gather_moments(float* m, float* v) {
  const size_t n = opt_.end() - opt_.begin();
  if (comm_.size() == 1) {
    std::memcpy(m, opt_.m(), n * sizeof(float));
    std::memcpy(v, opt_.v(), n * sizeof(float));
    return;
  }
  // place this rank's moments at their offset of a full buffer, then gather all ranges
  std::vector<float> full(total_);
  std::memcpy(full.data() + opt_.begin(), opt_.m(), n * sizeof(float));
  gather(full.data(), m);
  std::memcpy(full.data() + opt_.begin(), opt_.v(), n * sizeof(float));
  gather(full.data(), v);
}

void DataParallel::load_moments(const float* m, const float* v, int t) {
  const size_t n = opt_.end() - opt_.begin();
  std::memcpy(opt_.m(), m + opt_.begin(), n * sizeof(float));
  std::memcpy(opt_.v(), v + opt_.begin(), n * sizeof(float));
  opt_.set_t(t);
}
