// The MPI communicator under mpiexec (-n 2 and -n 4): every collective against the values a
// single process computes by hand, and sub-communicators as the data x tensor grid uses them.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "parallel/communicator.h"
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

}  // namespace
