// The NCCL backend of Communicator: device buffers. Every collective of every NCCL communicator
// of this process (those split from it too) goes on one communication stream, after an event of
// the default stream, so the GPU runs them one at a time in the order the host issued them. NCCL's
// user guide ("Using multiple NCCL communicators concurrently") says its kernels block while they
// wait for their peers, so that collectives of different communicators in flight together may
// deadlock (on separate streams they "might work provided they can fit within the GPU"); it asks
// for operations on different communicators to be used one after another, submitted in the same
// order on every rank. Every rank runs the same program, so the order on that stream is the same
// everywhere (data_parallel.cpp issues its buckets at fixed points of the backward, never on
// timing) and no rank waits for a collective another rank queued behind one it waits for. The
// blocking collectives wait on the host for the stream; the non-blocking ones (gradient buckets)
// overlap the default stream's kernels launched after them, and Request::wait() makes the default
// stream wait for them. Built only with the CUDA backend.
#ifdef KVMTRAIN_HAS_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include <memory>
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

cudaEvent_t record_event(cudaStream_t stream) {
  cudaEvent_t ev;
  cuda_check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  cuda_check(cudaEventRecord(ev, stream), "cudaEventRecord");
  return ev;
}

// The communication stream every NCCL communicator of the process enqueues on (one GPU per
// process: the current device when the first communicator is made). It lives while any of them
// does.
class CommStream {
 public:
  CommStream() {
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    cuda_check(cudaEventCreateWithFlags(&default_done_, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  }
  ~CommStream() {
    cudaEventDestroy(default_done_);
    cudaStreamDestroy(stream_);
  }
  CommStream(const CommStream&) = delete;
  CommStream& operator=(const CommStream&) = delete;

  static std::shared_ptr<CommStream> shared() {
    static std::weak_ptr<CommStream> current;
    std::shared_ptr<CommStream> s = current.lock();
    if (!s) current = s = std::make_shared<CommStream>();
    return s;
  }
  // The stream, ordered after the kernels already on the default stream (the buffers a collective
  // is about to read were written there). One event serves every call: a wait takes the event as
  // recorded when it is made.
  cudaStream_t after_default_stream() {
    cuda_check(cudaEventRecord(default_done_, 0), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(stream_, default_done_, 0), "cudaStreamWaitEvent");
    return stream_;
  }
  // Returns once everything enqueued so far is done. The default stream needs no event then: what
  // is launched on it after this returns starts after the collective.
  void synchronize(const char* after) {
    cuda_check(cudaStreamSynchronize(stream_), (std::string("cudaStreamSynchronize after ") + after).c_str());
  }
  cudaStream_t stream() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
  cudaEvent_t default_done_ = nullptr;
};

// The end of a collective enqueued on the communication stream.
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
  explicit NcclCommunicator(ncclComm_t comm) : comm_(comm), stream_(CommStream::shared()) {
    nccl_check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
    nccl_check(ncclCommCount(comm_, &size_), "ncclCommCount");
  }
  ~NcclCommunicator() override { ncclCommDestroy(comm_); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }

  void all_reduce_sum(float* buf, size_t n) override {
    nccl_check(ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, comm_, stream_->after_default_stream()), "ncclAllReduce");
    stream_->synchronize("ncclAllReduce");
  }
  void reduce_scatter_sum(const float* send, float* recv, size_t n) override {
    nccl_check(ncclReduceScatter(send, recv, n, ncclFloat, ncclSum, comm_, stream_->after_default_stream()),
               "ncclReduceScatter");
    stream_->synchronize("ncclReduceScatter");
  }
  std::unique_ptr<Request> all_reduce_sum_async(float* buf, size_t n) override {
    nccl_check(ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, comm_, stream_->after_default_stream()), "ncclAllReduce");
    return std::make_unique<NcclRequest>(stream_->stream());
  }
  // One in-place ncclReduce to each owner of a piece, fused into one launch by the group.
  std::unique_ptr<Request> reduce_scatter_sum_async(float* buf, const std::vector<size_t>& counts) override {
    cudaStream_t stream = stream_->after_default_stream();
    nccl_check(ncclGroupStart(), "ncclGroupStart");
    float* piece = buf;
    for (int owner = 0; owner < size_; owner++) {
      const size_t n = counts[size_t(owner)];
      if (n) nccl_check(ncclReduce(piece, piece, n, ncclFloat, ncclSum, owner, comm_, stream), "ncclReduce");
      piece += n;
    }
    nccl_check(ncclGroupEnd(), "ncclGroupEnd");
    return std::make_unique<NcclRequest>(stream);
  }
  void all_gather(const float* send, float* recv, size_t n) override {
    nccl_check(ncclAllGather(send, recv, n, ncclFloat, comm_, stream_->after_default_stream()), "ncclAllGather");
    stream_->synchronize("ncclAllGather");
  }
  void broadcast(void* buf, size_t bytes, int root) override {
    nccl_check(ncclBroadcast(buf, buf, bytes, ncclChar, root, comm_, stream_->after_default_stream()), "ncclBroadcast");
    stream_->synchronize("ncclBroadcast");
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
  std::shared_ptr<CommStream> stream_;  // the process's one communication stream
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
