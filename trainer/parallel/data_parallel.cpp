#include "trainer/parallel/data_parallel.h"

#include <algorithm>
#include <stdexcept>

#include "trainer/parallel/tensor_parallel.h"

namespace {

// Ranges of 64-byte multiples, so that every rank's range starts on a cache line.
size_t shard_size(size_t total, int ranks) { return ((total + ranks - 1) / ranks + 15) / 16 * 16; }

}  // namespace

DataParallel::DataParallel(Communicator& dp, const TensorTable& table, const config::TrainConfig& cfg,
                           size_t bucket_floats, bool zero1, const Backend& be)
    : comm_(dp),
      table_(table),
      be_(be),
      total_(table.total()),
      shard_(shard_size(table.total(), dp.size())),
      sharded_(zero1 && dp.size() > 1),
      opt_(table, cfg, sharded_ ? owner_begin(dp.rank()) : 0, sharded_ ? owner_begin(dp.rank() + 1) : total_, be),
      scalars_(be, 8),
      bucket_(bucket_floats ? (bucket_floats + 15) / 16 * 16 : total_) {
  if (sharded_) {
    send_ = DeviceBuffer(be, shard_);
    recv_ = DeviceBuffer(be, shard_ * comm_.size());
  }
}

float DataParallel::mean(float local) {
  sum_host(comm_, &local, 1);
  return local / float(comm_.size());
}

void DataParallel::sum_host(Communicator& comm, float* x, size_t n) const {
  if (comm.backend() != "nccl") return comm.all_reduce_sum(x, n);
  be_.from_host(scalars_.data(), x, n * sizeof(float));
  comm.all_reduce_sum(scalars_.data(), n);
  be_.to_host(x, scalars_.data(), n * sizeof(float));
}

// The communicator sums floats: a double travels as a high and a low part.
double DataParallel::sum_over(Communicator& comm, double x) const {
  float parts[2] = {float(x), float(x - double(float(x)))};
  sum_host(comm, parts, 2);
  return double(parts[0]) + double(parts[1]);
}

int64_t DataParallel::sum_count(int64_t local) const {
  if (comm_.size() == 1) return local;
  float bytes[8];
  for (int i = 0; i < 8; i++) bytes[i] = float((uint64_t(local) >> (8 * i)) & 0xff);
  sum_host(comm_, bytes, 8);
  uint64_t total = 0;
  for (int i = 0; i < 8; i++) total += uint64_t(bytes[i]) << (8 * i);
  return int64_t(total);
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
  // MPI moves a collective's data only inside MPI calls. The answers are not used: which bucket
  // starts when depends on the backward's ranges alone, never on timing, so every rank issues its
  // collectives in the same order (NCCL needs that, comm_nccl.cpp).
  for (auto& r : inflight_) r->test();
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
  const size_t lo = grads_begin(), hi = grads_end();
  be_.axpby_rows(grads_ + lo, grads_ + lo, 0.0f, 1.0f / float(comm_.size()), hi - lo, 1, 1, 1);
  grads_ = nullptr;
}

double DataParallel::grad_norm_squared(const float* grads, Communicator* tp) const {
  const bool first = !tp || tp->rank() == 0;  // a replicated tensor counts on tensor rank 0 only
  const size_t lo = grads_begin(), hi = grads_end();
  std::vector<kernels::IndexRange> ranges;
  for (const auto& v : table_.views()) {
    if (!tp::is_sharded(v) && !first) continue;
    const size_t a = std::max(lo, v.offset), b = std::min(hi, v.offset + v.size);
    if (a < b) ranges.push_back({a, b});
  }
  double sum = be_.global_norm_squared(grads, ranges.data(), int(ranges.size()));
  if (sharded_) sum = sum_over(comm_, sum);
  if (tp && tp->size() > 1) sum = sum_over(*tp, sum);
  return sum;
}

void DataParallel::gather(const float* range) {
  const size_t n = opt_.end() - opt_.begin();
  be_.zero(send_.data(), send_.bytes());  // the last rank's range may be shorter than shard_
  be_.copy(send_.data(), range, n * sizeof(float));
  comm_.all_gather(send_.data(), recv_.data(), shard_);
}

void DataParallel::step(float* params, const float* grads, float lr, float grad_scale) {
  opt_.step(params, grads, lr, grad_scale);
  if (!sharded_) return;
  gather(params + opt_.begin());
  be_.copy(params, recv_.data(), total_ * sizeof(float));
}

void DataParallel::gather_moments(float* m, float* v) {
  const size_t n = opt_.end() - opt_.begin();
  if (!sharded_) {
    be_.to_host(m, opt_.m(), n * sizeof(float));
    be_.to_host(v, opt_.v(), n * sizeof(float));
    return;
  }
  gather(opt_.m());
  be_.to_host(m, recv_.data(), total_ * sizeof(float));
  gather(opt_.v());
  be_.to_host(v, recv_.data(), total_ * sizeof(float));
}

void DataParallel::load_moments(const float* m, const float* v, int t) {
  const size_t n = opt_.end() - opt_.begin();
  be_.from_host(opt_.m(), m + opt_.begin(), n * sizeof(float));
  be_.from_host(opt_.v(), v + opt_.begin(), n * sizeof(float));
  opt_.set_t(t);
}
