#include "trainer/parallel/mesh.h"

#include <cstdint>
#include <cstdlib>
#include <stdexcept>

namespace {

// Every rank must train the same model on the same recipe: a config that differs (another file
// on another node, say) stops the job with an error instead of a silent divergence or a hang.
void check_same_config(Communicator& world, const std::string& resolved) {
  if (world.size() == 1) return;
  uint64_t mine = 1469598103934665603ull;  // FNV-1a of the resolved YAML
  for (unsigned char c : resolved) mine = (mine ^ c) * 1099511628211ull;
  uint64_t leaders = mine;
  world.broadcast(&leaders, sizeof leaders, 0);
  float differs = leaders != mine ? 1.0f : 0.0f;
  world.all_reduce_sum(&differs, 1);
  if (differs > 0)
    throw std::runtime_error("parallel: the resolved config differs across ranks (" + std::to_string(int(differs)) +
                             " of " + std::to_string(world.size()) + " differ from rank 0's)");
}

}  // namespace

int node_local_rank(int world_rank) {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"})
    if (const char* v = std::getenv(var)) return std::atoi(v);
  return world_rank;
}

Mesh::Mesh(std::unique_ptr<Communicator> world, const config::ParallelConfig& layout, const Backend& backend,
           const std::string& resolved_config)
    : world_(std::move(world)), data_size_(layout.data), tensor_size_(layout.tensor) {
  const int TP = tensor_size_, DP = data_size_;
  if (DP * TP != world_->size())
    throw std::runtime_error("parallel: data (" + std::to_string(DP) + ") x tensor (" + std::to_string(TP) + ") = " +
                             std::to_string(DP * TP) + " ranks, but the job has " + std::to_string(world_->size()) +
                             " (mpirun -np " + std::to_string(DP * TP) + ")");
  check_same_config(*world_, resolved_config);
  tensor_ = world_->split(world_->rank() / TP, world_->rank());
  data_ = world_->split(world_->rank() % TP, world_->rank());
#ifdef KVMTRAIN_HAS_CUDA
  // the gradients and activations live on the GPU: NCCL over the same ranks (its id travels over
  // MPI); the MPI tensor group stays for the host's gathers (checkpoints)
  if (!backend.host) {
    data_ = make_nccl_communicator(*data_);
    if (TP > 1) tensor_device_ = make_nccl_communicator(*tensor_);
  }
#endif
}
