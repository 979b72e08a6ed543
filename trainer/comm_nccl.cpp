// The NCCL backend of Communicator: device buffers, collectives on the default stream, each
// waited for before returning (the trainer's order of work is sequential today; overlap comes
// with streams in the CUDA backend). Built only with the CUDA backend.
#ifdef KVMTRAIN_HAS_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include <stdexcept>
#include <string>

#include "trainer/communicator.h"

namespace {

void nccl_check(ncclResult_t rc, const char* call) {
  if (rc == ncclSuccess) return;
  throw std::runtime_error(std::string(call) + " failed: " + ncclGetErrorString(rc) +
                           " (is every rank on its own GPU, and NCCL_DEBUG=WARN telling more?)");
}

void cuda_sync(const char* after) {
  cudaError_t rc = cudaStreamSynchronize(0);
  if (rc != cudaSuccess)
    throw std::runtime_error(std::string("cudaStreamSynchronize after ") + after + " failed: " + cudaGetErrorString(rc));
}

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(ncclComm_t comm) : comm_(comm) {
    nccl_check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
    nccl_check(ncclCommCount(comm_, &size_), "ncclCommCount");
  }
  ~NcclCommunicator() override { ncclCommDestroy(comm_); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }

  void all_reduce_sum(float* buf, size_t n) override {
    nccl_check(ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, comm_, 0), "ncclAllReduce");
    cuda_sync("ncclAllReduce");
  }
  void reduce_scatter_sum(const float* send, float* recv, size_t n) override {
    nccl_check(ncclReduceScatter(send, recv, n, ncclFloat, ncclSum, comm_, 0), "ncclReduceScatter");
    cuda_sync("ncclReduceScatter");
  }
  void all_gather(const float* send, float* recv, size_t n) override {
    nccl_check(ncclAllGather(send, recv, n, ncclFloat, comm_, 0), "ncclAllGather");
    cuda_sync("ncclAllGather");
  }
  void broadcast(void* buf, size_t bytes, int root) override {
    nccl_check(ncclBroadcast(buf, buf, bytes, ncclChar, root, comm_, 0), "ncclBroadcast");
    cuda_sync("ncclBroadcast");
  }
  void barrier() override {
    float* one = nullptr;
    if (cudaMalloc(&one, sizeof(float)) != cudaSuccess) throw std::runtime_error("barrier: cudaMalloc failed");
    all_reduce_sum(one, 1);
    cudaFree(one);
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    ncclComm_t sub;
    nccl_check(ncclCommSplit(comm_, color, key, &sub, nullptr), "ncclCommSplit");
    return std::make_unique<NcclCommunicator>(sub);
  }

 private:
  ncclComm_t comm_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& over) {
  ncclUniqueId id;
  if (over.rank() == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  over.broadcast(&id, sizeof id, 0);
  ncclComm_t comm;
  nccl_check(ncclCommInitRank(&comm, over.size(), id, over.rank()), "ncclCommInitRank");
  return std::make_unique<NcclCommunicator>(comm);
}
#endif
