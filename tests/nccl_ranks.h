#pragma once
// The fixture of the tests that run NCCL under mpiexec (tests/mpi_test_main.h's world): every rank
// needs a GPU of its own (NCCL refuses two ranks of one communicator on one device), else every
// rank skips.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "kernels/backend.h"
#include "kernels/kernels.h"
#include "tests/mpi_test_main.h"
#include "trainer/parallel/communicator.h"
#include "trainer/parallel/mesh.h"

namespace test_util {

// Empty when every rank of `world` (host memory) has a GPU of its own, rank r taking its node's GPU
// node_local_rank(r) as training does; else why not. Decided from a sum over all ranks, so that
// every rank skips or none does: a rank going on alone would wait forever in its first collective.
inline std::string why_no_gpu_per_rank(Communicator& world) {
  const int devices = kernels::cuda::device_count();
  float without = node_local_rank(world.rank()) < devices ? 0.0f : 1.0f;
  world.all_reduce_sum(&without, 1);
  if (without == 0) return "";
  return std::to_string(int(without)) + " of " + std::to_string(world.size()) +
         " ranks have no GPU of their own (rank " + std::to_string(world.rank()) + " sees " +
         std::to_string(devices) + "): NCCL needs one per rank";
}

// The cuda backend on this rank's GPU and an NCCL communicator over every rank of world.
class NcclRanks : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = why_no_gpu_per_rank(*world);
    if (!why.empty()) GTEST_SKIP() << why;
    be = &backend_for(Backend::Device::cuda, node_local_rank(world->rank()));
    nccl = make_nccl_communicator(*world);
  }
  const Backend* be = nullptr;
  std::unique_ptr<Communicator> nccl;
};

}  // namespace test_util
