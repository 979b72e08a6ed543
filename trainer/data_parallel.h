#pragma once
// Data parallelism over the D ranks of a communicator: the loss and the gradients averaged over
// ranks (all-reduce), and ZeRO-1: each rank holds the AdamW moments of 1/D of the parameters,
// updates that range, and the ranges are all-gathered back into every rank's full parameters.
// With D = 1 it is plain AdamW and no communication.
#include <vector>

#include "trainer/communicator.h"
#include "trainer/config.h"
#include "trainer/optimizer.h"
#include "trainer/tensor_table.h"

class DataParallel {
 public:
  DataParallel(Communicator& dp, const TensorTable& table, const config::TrainConfig& cfg);

  float mean(float local);                   // the mean over ranks of a per-rank value
  void average_gradients(float* grads);      // (table.total()) in place: the mean over ranks
  // One AdamW update of this rank's range, then every rank gets all ranges.
  void step(float* params, const float* grads, float lr, float grad_scale);

  AdamW& optimizer() { return opt_; }        // this rank's shard of the optimizer
  // The moments of every parameter, gathered in the parameters' layout (for checkpoints, which
  // store them unsharded so that a run can resume on any number of ranks) ...
  void gather_moments(float* m /*(table.total())*/, float* v /*(table.total())*/);
  // ... and this rank's range of them taken back from such a full copy.
  void load_moments(const float* m, const float* v, int t);

 private:
  void gather(const float* full_in_range, float* full_out);  // every rank's range of a full buffer
  Communicator& comm_;
  size_t total_, shard_;  // floats in all, floats per rank (the last rank's range may be shorter)
  AdamW opt_;
  std::vector<float> send_, recv_;
};
