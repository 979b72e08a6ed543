// The MPI communicator under mpiexec (-n 2 and -n 4): every collective against the values a
// single process computes by hand, sub-communicators as the data x tensor grid uses them, and the
// Mesh that builds that grid, for every layout of the world and with its two errors.
#include <gtest/gtest.h>

#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "trainer/parallel/communicator.h"
#include "trainer/parallel/mesh.h"
#include "tests/mpi_test_main.h"

namespace {


// rank r's value at index i
float value(int r, size_t i) { return float(r + 1) * 0.5f + float(i % 7); }

TEST(CommMpi, LaunchedDistributed) {
  EXPECT_TRUE(comm_is_distributed());
  EXPECT_GE(world->size(), 2);
  EXPECT_EQ(world->backend(), "mpi");
}

TEST(CommMpi, AllReduceSums) {
  const int N = world->size();
  std::vector<float> buf(1000);
  for (size_t i = 0; i < buf.size(); i++) buf[i] = value(world->rank(), i);
  world->all_reduce_sum(buf.data(), buf.size());
  for (size_t i = 0; i < buf.size(); i++) {
    float want = 0;
    for (int r = 0; r < N; r++) want += value(r, i);
    ASSERT_FLOAT_EQ(buf[i], want) << i;
  }
}

TEST(CommMpi, ReduceScatterThenAllGatherIsAllReduce) {
  const int N = world->size();
  const size_t shard = 33;
  std::vector<float> send(N * shard), recv(shard), gathered(N * shard), reduced(N * shard);
  for (size_t i = 0; i < send.size(); i++) send[i] = value(world->rank(), i);
  reduced = send;
  world->reduce_scatter_sum(send.data(), recv.data(), shard);
  for (size_t i = 0; i < shard; i++) {
    float want = 0;
    for (int r = 0; r < N; r++) want += value(r, world->rank() * shard + i);
    ASSERT_FLOAT_EQ(recv[i], want);
  }
  world->all_gather(recv.data(), gathered.data(), shard);
  world->all_reduce_sum(reduced.data(), reduced.size());
  EXPECT_EQ(gathered, reduced);
}

TEST(CommMpi, BroadcastFromEveryRoot) {
  for (int root = 0; root < world->size(); root++) {
    std::vector<int> x(5, world->rank() == root ? 40 + root : -1);
    world->broadcast(x.data(), x.size() * sizeof(int), root);
    for (int v : x) ASSERT_EQ(v, 40 + root);
  }
  world->barrier();
}

TEST(CommMpi, SplitIntoGroups) {
  // two groups of consecutive ranks (the tensor-parallel groups of a data x tensor grid)
  const int N = world->size(), group = N / 2;
  auto sub = world->split(world->rank() / group, world->rank());
  EXPECT_EQ(sub->size(), group);
  EXPECT_EQ(sub->rank(), world->rank() % group);
  float x = float(world->rank());
  sub->all_reduce_sum(&x, 1);
  int first = world->rank() / group * group;
  float want = 0;
  for (int r = first; r < first + group; r++) want += float(r);
  EXPECT_FLOAT_EQ(x, want);
}

// The sum of the world ranks in `comm` (collective): which ranks a group holds.
float sum_of_world_ranks(Communicator& comm) {
  float x = float(world->rank());
  comm.all_reduce_sum(&x, 1);
  return x;
}

TEST(CommMpi, MeshOfEveryLayout) {
  const int N = world->size(), r = world->rank();
  for (int tensor = 1; tensor <= N; tensor++) {
    if (N % tensor != 0) continue;
    config::ParallelConfig layout;
    layout.data = N / tensor;
    layout.tensor = tensor;
    Mesh mesh(make_world_communicator(), layout, cpu_backend(), "the resolved config");
    EXPECT_EQ(mesh.rank(), r);
    EXPECT_EQ(mesh.world_size(), N);
    EXPECT_EQ(mesh.data_size(), N / tensor);
    EXPECT_EQ(mesh.tensor_size(), tensor);
    EXPECT_EQ(mesh.tensor_device(), nullptr) << "cpu: the host groups serve the model";
    // a data group: the ranks of this tensor rank, rank = data_rank * tensor + tensor_rank
    EXPECT_EQ(mesh.data_rank(), r / tensor);
    EXPECT_EQ(mesh.data().rank(), r / tensor);
    EXPECT_EQ(mesh.data().size(), N / tensor);
    float want = 0;
    for (int d = 0; d < N / tensor; d++) want += float(d * tensor + r % tensor);
    EXPECT_FLOAT_EQ(sum_of_world_ranks(mesh.data()), want) << "tensor " << tensor;
    // a tensor group: `tensor` consecutive ranks; none without tensor parallelism
    ASSERT_EQ(mesh.tensor() != nullptr, tensor > 1);
    if (!mesh.tensor()) continue;
    EXPECT_EQ(mesh.tensor()->rank(), r % tensor);
    EXPECT_EQ(mesh.tensor()->size(), tensor);
    want = 0;
    for (int t = 0; t < tensor; t++) want += float(r / tensor * tensor + t);
    EXPECT_FLOAT_EQ(sum_of_world_ranks(*mesh.tensor()), want) << "tensor " << tensor;
  }
}

// The error a Mesh of `layout` throws, "" when there is none (collective: every rank builds one).
std::string mesh_error(int data, int tensor, const std::string& resolved_config) {
  config::ParallelConfig layout;
  layout.data = data;
  layout.tensor = tensor;
  try {
    Mesh mesh(make_world_communicator(), layout, cpu_backend(), resolved_config);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(CommMpi, MeshRefusesAWrongSizeAndConfigsThatDiffer) {
  const int N = world->size();
  EXPECT_NE(mesh_error(N, 2, "same").find("parallel: data (" + std::to_string(N) + ") x tensor (2) = " +
                                          std::to_string(2 * N) + " ranks, but the job has " + std::to_string(N)),
            std::string::npos);
  // rank 1's config differs from rank 0's: every rank stops, before any group is split
  EXPECT_NE(mesh_error(N, 1, world->rank() == 1 ? "other" : "same")
                .find("parallel: the resolved config differs across ranks (1 of " + std::to_string(N)),
            std::string::npos);
  EXPECT_EQ(mesh_error(N, 1, "same"), "");
}

}  // namespace
