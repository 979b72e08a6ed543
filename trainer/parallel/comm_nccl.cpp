// The NCCL backend of Communicator: device buffers. Blocking collectives run on the default
// stream and are waited for before returning; the non-blocking ones run on the communicator's own
// stream, ordered after the default stream's work with an event, so that they overlap the kernels
// launched after them (gradient buckets during the backward). Built only with the CUDA backend.
#ifdef KVMTRAIN_HAS_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include <stdexcept>
#include <string>

#include "trainer/parallel/communicator.h"

namespace {

void nccl_check(ncclResult_t rc, const char* call) {
  if (rc == ncclSuccess) return;
  throw std::runtime_error(std::string(call) + " failed: " + ncclGetErrorString(rc) +
                           " (is every rank on its own GPU, and NCCL_DEBUG=WARN telling more?)");
}

void cuda_check(cudaError_t rc, const char* call) {
  if (rc != cudaSuccess) throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorString(rc));
}

void cuda_sync(const char* after) {
  cuda_check(cudaStreamSynchronize(0), (std::string("cudaStreamSynchronize after ") + after).c_str());
}

cudaEvent_t record_event(cudaStream_t stream) {
  cudaEvent_t ev;
  cuda_check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  cuda_check(cudaEventRecord(ev, stream), "cudaEventRecord");
  return ev;
}

// The end of collectives enqueued on the communication stream.
class NcclRequest final : public Communicator::Request {
 public:
  explicit NcclRequest(cudaStream_t stream) : done_(record_event(stream)) {}
  ~NcclRequest() override { cudaEventDestroy(done_); }  // released once the event has completed
  bool test() override {
    cudaError_t rc = cudaEventQuery(done_);
    if (rc == cudaErrorNotReady) return false;
    cuda_check(rc, "cudaEventQuery");
    return true;
  }
  void wait() override { cuda_check(cudaStreamWaitEvent(0, done_, 0), "cudaStreamWaitEvent"); }

 private:
  cudaEvent_t done_;
};

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(ncclComm_t comm) : comm_(comm) {
    nccl_check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
    nccl_check(ncclCommCount(comm_, &size_), "ncclCommCount");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  }
  ~NcclCommunicator() override {
    ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }
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
  std::unique_ptr<Request> all_reduce_sum_async(float* buf, size_t n) override {
    after_default_stream();
    nccl_check(ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, comm_, stream_), "ncclAllReduce");
    return std::make_unique<NcclRequest>(stream_);
  }
  // One in-place ncclReduce to each owner of a piece, fused into one launch by the group.
  std::unique_ptr<Request> reduce_scatter_sum_async(float* buf, const std::vector<size_t>& counts) override {
    after_default_stream();
    nccl_check(ncclGroupStart(), "ncclGroupStart");
    float* piece = buf;
    for (int owner = 0; owner < size_; owner++) {
      const size_t n = counts[size_t(owner)];
      if (n) nccl_check(ncclReduce(piece, piece, n, ncclFloat, ncclSum, owner, comm_, stream_), "ncclReduce");
      piece += n;
    }
    nccl_check(ncclGroupEnd(), "ncclGroupEnd");
    return std::make_unique<NcclRequest>(stream_);
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
  // The communication stream starts after the kernels already on the default stream (the
  // gradients it is about to reduce).
  void after_default_stream() {
    cudaEvent_t ready = record_event(0);
    cuda_check(cudaStreamWaitEvent(stream_, ready, 0), "cudaStreamWaitEvent");
    cudaEventDestroy(ready);
  }
  ncclComm_t comm_;
  cudaStream_t stream_ = nullptr;  // the non-blocking collectives'
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
