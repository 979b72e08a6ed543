// The NCCL communicator under mpiexec (-n 1, 2 and 4), one GPU per rank: every collective, the
// non-blocking all-reduce and uneven reduce-scatter (several in flight, waited for in another
// order, the default stream's kernels after wait() reading their results), subgroups from split(),
// and collectives of two communicators interleaved as data x tensor parallelism issues them,
// against sums computed on the host. The values are small integers, so every sum is exact in any
// order. Skipped (every rank alike) where a rank has no GPU of its own.
#include <gtest/gtest.h>

#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "tests/mpi_test_main.h"
#include "tests/nccl_ranks.h"
#include "tests/trainer/model/small_models.h"
#include "trainer/parallel/communicator.h"

namespace {

// What rank r contributes at index i.
float value(int r, size_t i) { return float(3 * (r + 1) + int(i % 7)); }

std::vector<float> values(int r, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; i++) v[i] = value(r, i);
  return v;
}

// The sum over ranks [0, N) of value(., i).
float sum_over_ranks(int N, size_t i) {
  float s = 0;
  for (int q = 0; q < N; q++) s += value(q, i);
  return s;
}

class CommNccl : public test_util::NcclRanks {
 protected:
  DeviceBuffer upload(const std::vector<float>& host) const {
    DeviceBuffer d(*be, host.size());
    be->from_host(d.data(), host.data(), d.bytes());
    return d;
  }
  std::vector<float> download(const DeviceBuffer& d) const { return test_models::to_host(*be, d.data(), d.size()); }
  // x *= factor on the default stream, in place
  void scale(DeviceBuffer& x, float factor) const { be->axpby_rows(x.data(), x.data(), 0.0f, factor, x.size(), 1, 1, 1); }
};

TEST_F(CommNccl, CollectivesMatchTheHost) {
  const int N = nccl->size(), r = nccl->rank();
  ASSERT_EQ(N, world->size());
  ASSERT_EQ(r, world->rank());
  EXPECT_EQ(nccl->backend(), "nccl");
  const size_t n = 1000;

  DeviceBuffer sum = upload(values(r, n));
  nccl->all_reduce_sum(sum.data(), n);
  std::vector<float> got = download(sum);
  for (size_t i = 0; i < n; i++) ASSERT_EQ(got[i], sum_over_ranks(N, i)) << "all_reduce_sum " << i;

  DeviceBuffer send = upload(values(r, size_t(N) * n)), part(*be, n);
  nccl->reduce_scatter_sum(send.data(), part.data(), n);
  got = download(part);
  for (size_t i = 0; i < n; i++) ASSERT_EQ(got[i], sum_over_ranks(N, size_t(r) * n + i)) << "reduce_scatter_sum " << i;

  DeviceBuffer mine = upload(values(r, n)), all(*be, size_t(N) * n);
  nccl->all_gather(mine.data(), all.data(), n);
  got = download(all);
  for (int q = 0; q < N; q++)
    for (size_t i = 0; i < n; i++) ASSERT_EQ(got[size_t(q) * n + i], value(q, i)) << "all_gather from " << q;

  DeviceBuffer bcast = upload(values(r, n));
  nccl->broadcast(bcast.data(), bcast.bytes(), N - 1);
  got = download(bcast);
  for (size_t i = 0; i < n; i++) ASSERT_EQ(got[i], value(N - 1, i)) << "broadcast from rank " << N - 1;

  nccl->barrier();
}

// Subgroups: the ranks of one parity (rank order reversed by the key), and all ranks reversed.
TEST_F(CommNccl, SplitMakesSubgroupsInKeyOrder) {
  const int N = nccl->size(), r = nccl->rank();
  const size_t n = 300;
  for (bool by_parity : {true, false}) {
    SCOPED_TRACE(by_parity ? "by parity" : "all ranks");
    std::vector<int> members;  // world ranks of this rank's group, in key order (descending)
    for (int q = N - 1; q >= 0; q--)
      if (!by_parity || q % 2 == r % 2) members.push_back(q);
    auto sub = nccl->split(by_parity ? r % 2 : 0, N - 1 - r);
    ASSERT_EQ(sub->size(), int(members.size()));
    ASSERT_EQ(members[size_t(sub->rank())], r);
    EXPECT_EQ(sub->backend(), "nccl");

    DeviceBuffer sum = upload(values(r, n));
    sub->all_reduce_sum(sum.data(), n);
    const std::vector<float> got = download(sum);
    for (size_t i = 0; i < n; i++) {
      float want = 0;
      for (int q : members) want += value(q, i);
      ASSERT_EQ(got[i], want) << "all_reduce_sum " << i;
    }
    DeviceBuffer mine = upload(values(r, n)), all(*be, members.size() * n);
    sub->all_gather(mine.data(), all.data(), n);
    const std::vector<float> gathered = download(all);
    for (size_t k = 0; k < members.size(); k++)
      for (size_t i = 0; i < n; i++) ASSERT_EQ(gathered[k * n + i], value(members[k], i)) << "all_gather " << k;
    sub->barrier();
  }
}

// Pieces of `counts` (one per rank, zeros allowed) over values(r, ...): rank r's own piece summed
// over ranks, every other piece as it was, then `factor` times that.
std::vector<float> want_reduce_scatter(const std::vector<size_t>& counts, int r, float factor) {
  const int N = int(counts.size());
  std::vector<float> want = values(r, std::accumulate(counts.begin(), counts.end(), size_t(0)));
  size_t begin = 0;
  for (int owner = 0; owner < N; owner++) {
    if (owner == r)
      for (size_t i = begin; i < begin + counts[size_t(owner)]; i++) want[i] = sum_over_ranks(N, i);
    begin += counts[size_t(owner)];
  }
  for (float& w : want) w *= factor;
  return want;
}

// Several non-blocking collectives in flight at once, waited for in another order than started,
// without the host polling; a kernel on the default stream right after wait() must read the result
// (the large all-reduce would still be running were the default stream not made to wait), and one
// right before the start must be what is reduced.
TEST_F(CommNccl, AsyncCollectivesInFlightTogether) {
  const int N = nccl->size(), r = nccl->rank();
  const size_t big = size_t(1) << 22;  // 16 MB: long enough to race a kernel that does not wait
  // uneven pieces: rank 0's empty (but for a rank alone), or all of them the last rank's
  std::vector<size_t> first_empty(static_cast<size_t>(N)), last_only(static_cast<size_t>(N), 0);
  for (int q = 0; q < N; q++) first_empty[size_t(q)] = q == 0 && N > 1 ? 0 : size_t(333 * q + 5);
  last_only.back() = 4099;

  DeviceBuffer a = upload(values(r, big)), b = upload(values(r, 1234)),
               c = upload(values(r, std::accumulate(first_empty.begin(), first_empty.end(), size_t(0)))),
               d = upload(values(r, 4099));
  scale(a, 2.0f);  // on the default stream: the all-reduce must start after it
  std::vector<std::unique_ptr<Communicator::Request>> started;
  started.push_back(nccl->all_reduce_sum_async(a.data(), big));
  started.push_back(nccl->reduce_scatter_sum_async(c.data(), first_empty));
  started.push_back(nccl->all_reduce_sum_async(b.data(), b.size()));
  started.push_back(nccl->reduce_scatter_sum_async(d.data(), last_only));
  for (int k : {3, 0, 2, 1}) started[size_t(k)]->wait();
  for (DeviceBuffer* x : {&a, &b, &c, &d}) scale(*x, 2.0f);

  std::vector<float> got = download(a);
  for (size_t i = 0; i < big; i++) ASSERT_EQ(got[i], 4.0f * sum_over_ranks(N, i)) << "all-reduce of " << big << " at " << i;
  got = download(b);
  for (size_t i = 0; i < got.size(); i++) ASSERT_EQ(got[i], 2.0f * sum_over_ranks(N, i)) << "all-reduce of 1234 at " << i;
  EXPECT_EQ(download(c), want_reduce_scatter(first_empty, r, 2.0f)) << "reduce-scatter, rank 0's piece empty";
  EXPECT_EQ(download(d), want_reduce_scatter(last_only, r, 2.0f)) << "reduce-scatter, all to the last rank";
}

// test() turns true once a collective is done, and the host may poll it while others are in flight.
TEST_F(CommNccl, AsyncTestReportsCompletion) {
  const int N = nccl->size(), r = nccl->rank();
  std::vector<size_t> counts(static_cast<size_t>(N));
  for (int q = 0; q < N; q++) counts[size_t(q)] = size_t(100 + 50 * q);
  DeviceBuffer a = upload(values(r, 5000)), b = upload(values(r, std::accumulate(counts.begin(), counts.end(), size_t(0))));
  auto ra = nccl->all_reduce_sum_async(a.data(), a.size());
  auto rb = nccl->reduce_scatter_sum_async(b.data(), counts);
  while (!(ra->test() && rb->test())) {
  }
  EXPECT_TRUE(ra->test());
  ra->wait();
  rb->wait();
  const std::vector<float> got = download(a);
  for (size_t i = 0; i < got.size(); i++) ASSERT_EQ(got[i], sum_over_ranks(N, i)) << i;
  EXPECT_EQ(download(b), want_reduce_scatter(counts, r, 1.0f));
}

// Data x tensor parallelism's pattern on two communicators of one process: non-blocking
// collectives of one (gradient buckets) in flight while blocking ones of the other (the model's
// all-reduces) are issued, as the backward does. They share one stream, so this must neither hang
// nor mix up results.
TEST_F(CommNccl, TwoCommunicatorsInterleaved) {
  const int N = nccl->size(), r = nccl->rank();
  auto reversed = nccl->split(0, N - 1 - r);  // the same ranks in another order, a communicator of its own
  const size_t n = size_t(1) << 20;
  std::vector<size_t> counts(static_cast<size_t>(N), 0);
  counts[0] = 777;
  DeviceBuffer bucket1 = upload(values(r, n)), bucket2 = upload(values(r, 777)), tensor1 = upload(values(r, 999)),
               tensor2 = upload(values(r, 999));
  auto first = nccl->all_reduce_sum_async(bucket1.data(), n);
  reversed->all_reduce_sum(tensor1.data(), tensor1.size());
  auto second = nccl->reduce_scatter_sum_async(bucket2.data(), counts);
  reversed->all_reduce_sum(tensor2.data(), tensor2.size());
  second->wait();
  first->wait();
  std::vector<float> got = download(bucket1);
  for (size_t i = 0; i < n; i++) ASSERT_EQ(got[i], sum_over_ranks(N, i)) << "bucket 1 at " << i;
  EXPECT_EQ(download(bucket2), want_reduce_scatter(counts, r, 1.0f)) << "bucket 2";
  for (DeviceBuffer* t : {&tensor1, &tensor2}) {
    got = download(*t);
    for (size_t i = 0; i < got.size(); i++) ASSERT_EQ(got[i], sum_over_ranks(N, i)) << "tensor all-reduce at " << i;
  }
}

}  // namespace
