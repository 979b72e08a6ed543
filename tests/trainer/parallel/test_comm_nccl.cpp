// The NCCL communicator on the GPUs of this machine (one rank per GPU under mpiexec; a single
// process gets a 1-rank NCCL communicator): every collective against values computed on the
// host. Without a CUDA device every test skips, saying so.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

#include "kernels/kernels.h"
#include "trainer/parallel/communicator.h"
#include "tests/mpi_test_main.h"

namespace {


class CommNccl : public ::testing::Test {
 protected:
  void SetUp() override {
    int devices = kernels::cuda::device_count();
    if (devices == 0) GTEST_SKIP() << "no CUDA device: the NCCL communicator runs only on a GPU machine";
    if (devices < world->size()) GTEST_SKIP() << "fewer GPUs (" << devices << ") than ranks (" << world->size() << ")";
    ASSERT_EQ(cudaSetDevice(world->rank()), cudaSuccess);
    nccl = make_nccl_communicator(*world);
  }
  std::unique_ptr<Communicator> nccl;
};

struct DeviceBuffer {
  float* p = nullptr;
  explicit DeviceBuffer(size_t n) { EXPECT_EQ(cudaMalloc(&p, n * sizeof(float)), cudaSuccess); }
  ~DeviceBuffer() { cudaFree(p); }
};

TEST_F(CommNccl, CollectivesMatchTheHost) {
  const int N = nccl->size(), r = nccl->rank();
  EXPECT_EQ(nccl->backend(), "nccl");
  const size_t n = 1000;
  std::vector<float> host(N * n);
  for (size_t i = 0; i < host.size(); i++) host[i] = float(r + 1) + float(i % 5);
  DeviceBuffer a(N * n), b(N * n);
  cudaMemcpy(a.p, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice);
  nccl->all_reduce_sum(a.p, N * n);
  std::vector<float> got(N * n);
  cudaMemcpy(got.data(), a.p, got.size() * sizeof(float), cudaMemcpyDeviceToHost);
  for (size_t i = 0; i < got.size(); i++) ASSERT_FLOAT_EQ(got[i], float(N * (N + 1) / 2) + float(N) * float(i % 5));

  cudaMemcpy(a.p, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice);
  nccl->reduce_scatter_sum(a.p, b.p, n);
  nccl->all_gather(b.p, a.p, n);
  cudaMemcpy(got.data(), a.p, got.size() * sizeof(float), cudaMemcpyDeviceToHost);
  for (size_t i = 0; i < got.size(); i++) ASSERT_FLOAT_EQ(got[i], float(N * (N + 1) / 2) + float(N) * float(i % 5));

  std::vector<float> x(n, r == 0 ? 7.0f : 0.0f);
  cudaMemcpy(a.p, x.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  nccl->broadcast(a.p, n * sizeof(float), 0);
  cudaMemcpy(x.data(), a.p, n * sizeof(float), cudaMemcpyDeviceToHost);
  for (float v : x) ASSERT_EQ(v, 7.0f);
  nccl->barrier();
}

}  // namespace
