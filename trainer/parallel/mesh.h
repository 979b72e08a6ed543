#pragma once
// The ranks of a training job as a data x tensor grid (torchtitan's device mesh, two dimensions):
// rank = data_rank * tensor + tensor_rank, so that a tensor group is consecutive ranks and on one
// node its all-reduces stay close. The mesh owns the communicators of the grid: the world, this
// rank's tensor group and its data group, over host memory (MPI), and on cuda NCCL communicators
// over the same ranks for the collectives on device memory.
#include <memory>
#include <string>

#include "trainer/config/config.h"
#include "kernels/backend.h"
#include "trainer/parallel/communicator.h"

// This rank's index among the ranks on its node (Open MPI, Slurm, MPICH), else its world rank:
// with cuda, the GPU it takes (backend_for's device_index).
int node_local_rank(int world_rank);

class Mesh {
 public:
  // Splits `world` into layout.data x layout.tensor. Collective over `world`: every rank builds
  // its mesh at the same point, and the groups are created in the same order on every rank (the
  // tensor group, the data group, then on cuda the data group's NCCL communicator and, with
  // tensor parallelism, the tensor group's), so that none waits for a rank creating another.
  // Throws when data x tensor is not the world's size, or when `resolved_config` (the resolved
  // YAML) differs across ranks: checked before the split, which ranks with another layout would
  // make differently and then hang in.
  Mesh(std::unique_ptr<Communicator> world, const config::ParallelConfig& layout, const Backend& backend,
       const std::string& resolved_config);

  Communicator& world() { return *world_; }
  // The data-parallel group (the ranks of this tensor rank), over the backend's memory.
  Communicator& data() { return *data_; }
  // The tensor-parallel group over host memory; null without tensor parallelism.
  Communicator* tensor() { return tensor_size_ > 1 ? tensor_.get() : nullptr; }
  // The tensor group over device memory (NCCL, cuda with tensor parallelism); null otherwise,
  // where tensor() serves the model's own collectives too.
  Communicator* tensor_device() { return tensor_device_.get(); }

  int rank() const { return world_->rank(); }
  int world_size() const { return world_->size(); }
  int data_rank() const { return world_->rank() / tensor_size_; }
  int data_size() const { return data_size_; }
  int tensor_size() const { return tensor_size_; }

 private:
  std::unique_ptr<Communicator> world_;
  int data_size_, tensor_size_;
  std::unique_ptr<Communicator> tensor_, data_, tensor_device_;
};
