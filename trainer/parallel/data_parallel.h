#pragma once
// Data parallelism over the D ranks of a communicator: the loss and the gradients averaged over
// ranks, and ZeRO-1: each rank holds the AdamW moments of 1/D of the parameters, updates that
// range, and the ranges are all-gathered back into every rank's full parameters. With D = 1 it is
// plain AdamW and no communication.
//
// Gradients are reduced in buckets, overlapped with the backward (PyTorch DDP, Megatron-LM): the
// model announces ranges of the gradient buffer as they become final, from the top of the buffer
// down (Model::on_grads_ready), and each bucket's reduction starts as soon as all of it is final,
// while the backward goes on below it. Bucket k is the floats [total - (k+1)*bucket, total -
// k*bucket) (the last one shorter), so there are ceil(total / bucket) of them. A bucket is
// all-reduced, or with ZeRO-1 reduced to the owners of its floats only (each rank needs the mean
// over ranks of its own range, nothing else).
//
// Every buffer (gradients, parameters, moments) is in the memory of the backend it is built with,
// and the communicator works on that memory: MPI on cpu, NCCL on cuda.
#include <algorithm>
#include <memory>
#include <vector>

#include "trainer/parallel/communicator.h"
#include "trainer/config/config.h"
#include "trainer/optim/optimizer.h"
#include "common/tensor_table.h"

class DataParallel {
 public:
  // bucket_floats: gradient bucket size (rounded up to 16 floats); 0: one bucket, the whole buffer.
  // zero1 false: every rank holds all the moments and updates all parameters from all-reduced
  // gradients (no all-gather; D times the optimizer memory).
  DataParallel(Communicator& dp, const TensorTable& table, const config::TrainConfig& cfg, size_t bucket_floats = 0,
               bool zero1 = true, const Backend& be = cpu_backend());

  float mean(float local);  // the mean over ranks of a per-rank value
  double sum(double local) const { return sum_over(comm_, local); }  // the sum over ranks (to ~1e-14)
  // The exact sum over ranks of a count in [0, 2^63): the communicator sums floats, so it travels
  // as 8 bytes, each summed exactly as a float (up to 65793 ranks).
  int64_t sum_count(int64_t local) const;

  // The gradient average of one step, in three calls: start_gradients before the backward whose
  // gradients are final (the last micro-step), gradients_ready from the model's callback during
  // it, finish_gradients after it. Then grads (table.total()) holds the mean over ranks in
  // [grads_begin(), grads_end()): this rank's range under ZeRO-1 (the rest is this rank's own,
  // unreduced), else everything.
  void start_gradients(float* grads);
  void gradients_ready(size_t begin, size_t end);  // [begin, end) is final; end: the last begin
  void finish_gradients();                         // starts what is left, waits, divides by D
  void average_gradients(float* grads) {  // the same without a backward: every bucket at once
    start_gradients(grads);
    finish_gradients();
  }
  size_t grads_begin() const { return sharded_ ? opt_.begin() : 0; }
  size_t grads_end() const { return sharded_ ? opt_.end() : total_; }
  // The squared L2 norm of the averaged gradients of the whole model: the range above, summed
  // over the data ranks and, when given, the tensor ranks (each element counted once).
  double grad_norm_squared(const float* grads, Communicator* tp) const;
  // Buckets of the last step, and how many of them started during the backward (the rest
  // started in finish_gradients).
  int buckets() const { return buckets_; }
  int buckets_overlapped() const { return overlapped_; }

  // One AdamW update of this rank's range (ZeRO-1; else of everything), then every rank gets all.
  void step(float* params, const float* grads, float lr, float grad_scale);

  AdamW& optimizer() { return opt_; }        // this rank's shard of the optimizer
  // The moments of every parameter, gathered in the parameters' layout (for checkpoints, which
  // store them unsharded so that a run can resume on any number of ranks), into host memory ...
  void gather_moments(float* m /*(table.total())*/, float* v /*(table.total())*/);
  // ... and this rank's range of them taken back from such a full host copy.
  void load_moments(const float* m, const float* v, int t);

 private:
  // every rank's range (its opt_ range, from `range`) into recv_, in rank order: a full buffer
  void gather(const float* range);
  // sums of host values over the ranks of comm (dp or tp): x (n <= 8) in place, and a double
  void sum_host(Communicator& comm, float* x, size_t n) const;
  double sum_over(Communicator& comm, double x) const;
  void launch_final_buckets();  // starts every bucket that lies wholly at or above ready_
  size_t owner_begin(int r) const { return std::min(total_, size_t(r) * shard_); }  // rank r's range starts
  Communicator& comm_;
  const TensorTable& table_;
  const Backend& be_;
  size_t total_, shard_;  // floats in all, floats per rank (the last rank's range may be shorter)
  bool sharded_;          // ZeRO-1 over more than one rank
  AdamW opt_;
  DeviceBuffer send_, recv_;      // ZeRO-1 all-gather: (shard_), (size * shard_)
  mutable DeviceBuffer scalars_;  // (8): host values reduce through it over NCCL, which reads device memory only
  size_t bucket_;  // floats per bucket
  // the step's reduction under way (none while grads_ is null): the gradients from ready_ up are
  // final, those from started_ up are being reduced
  float* grads_ = nullptr;
  size_t ready_ = 0, started_ = 0;
  std::vector<std::unique_ptr<Communicator::Request>> inflight_;
  int buckets_ = 0, overlapped_ = 0;
};
