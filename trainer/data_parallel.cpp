#include "trainer/data_parallel.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "trainer/tensor_parallel.h"

namespace {

// Ranges of 64-byte multiples, so that every rank's range starts on a cache line.
size_t shard_size(size_t total, int ranks) { return ((total + ranks - 1) / ranks + 15) / 16 * 16; }

// The communicator sums floats: a double travels as a high and a low part.
double sum_over(Communicator& comm, double x) {
  float parts[2] = {float(x), float(x - double(float(x)))};
  comm.all_reduce_sum(parts, 2);
  return double(parts[0]) + double(parts[1]);
}

}  // namespace

DataParallel::DataParallel(Communicator& dp, const TensorTable& table, const config::TrainConfig& cfg,
                           size_t bucket_floats, bool zero1)
    : comm_(dp),
      table_(table),
      total_(table.total()),
      shard_(shard_size(table.total(), dp.size())),
      sharded_(zero1 && dp.size() > 1),
      opt_(table, cfg, sharded_ ? owner_begin(dp.rank()) : 0, sharded_ ? owner_begin(dp.rank() + 1) : total_),
      bucket_(bucket_floats ? (bucket_floats + 15) / 16 * 16 : total_) {
  if (sharded_) {
    send_.resize(shard_);
    recv_.resize(shard_ * comm_.size());
  }
}

float DataParallel::mean(float local) {
  comm_.all_reduce_sum(&local, 1);
  return local / float(comm_.size());
}

void DataParallel::start_gradients(float* grads) {
  if (comm_.size() == 1) return;
  grads_ = grads;
  ready_ = started_ = total_;
  buckets_ = overlapped_ = 0;
}

void DataParallel::gradients_ready(size_t begin, size_t end) {
  if (!grads_) return;  // not the last micro-step, or one rank
  if (end != ready_ || begin > end)
    throw std::logic_error("DataParallel::gradients_ready: ranges must come from the top of the buffer down");
  ready_ = begin;
  launch_final_buckets();
  overlapped_ = buckets_;
  for (auto& r : inflight_) r->test();  // MPI moves a collective's data only inside MPI calls
}

void DataParallel::launch_final_buckets() {
  while (started_ > 0) {
    const size_t lo = started_ > bucket_ ? started_ - bucket_ : 0, hi = started_;
    if (lo < ready_) return;
    if (sharded_) {
      std::vector<size_t> counts(size_t(comm_.size()));  // the bucket's part in each rank's range
      for (int r = 0; r < comm_.size(); r++) {
        const size_t a = std::max(lo, owner_begin(r)), b = std::min(hi, owner_begin(r + 1));
        counts[size_t(r)] = b > a ? b - a : 0;
      }
      inflight_.push_back(comm_.reduce_scatter_sum_async(grads_ + lo, counts));
    } else {
      inflight_.push_back(comm_.all_reduce_sum_async(grads_ + lo, hi - lo));
    }
    started_ = lo;
    buckets_++;
  }
}

void DataParallel::finish_gradients() {
  if (comm_.size() == 1) return;
  if (!grads_) throw std::logic_error("DataParallel::finish_gradients without start_gradients");
  ready_ = 0;
  launch_final_buckets();
  for (auto& r : inflight_) r->wait();
  inflight_.clear();
  float* g = grads_;
  const size_t lo = grads_begin(), hi = grads_end();
  const float inv = 1.0f / float(comm_.size());
#pragma omp parallel for simd schedule(static)
  for (size_t i = lo; i < hi; i++) g[i] *= inv;
  grads_ = nullptr;
}

double DataParallel::grad_norm_squared(const float* grads, Communicator* tp) const {
  const bool first = !tp || tp->rank() == 0;  // a replicated tensor counts on tensor rank 0 only
  const size_t lo = grads_begin(), hi = grads_end();
  double sum = 0;
  for (const auto& v : table_.views()) {
    if (!tp::is_sharded(v) && !first) continue;
    const size_t a = std::max(lo, v.offset), b = std::min(hi, v.offset + v.size);
    for (size_t i = a; i < b; i++) sum += double(grads[i]) * grads[i];
  }
  if (sharded_) sum = sum_over(comm_, sum);
  if (tp && tp->size() > 1) sum = sum_over(*tp, sum);
  return sum;
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
  if (sharded_) gather(params, params);
}

void DataParallel::gather_moments(float* m, float* v) {
  const size_t n = opt_.end() - opt_.begin();
  if (!sharded_) {
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
