// The MPI backend of Communicator: host buffers, MPI_Allreduce and friends, in place where MPI
// allows it.
#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <vector>

#include "trainer/parallel/communicator.h"

namespace {

void mpi_check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw std::runtime_error(std::string(call) + " failed: " + std::string(msg, size_t(len)));
}

// MPI counts are int: split large buffers into chunks below 2^30 elements.
constexpr size_t kMaxChunk = size_t(1) << 30;

// Non-blocking collectives (one per chunk) that complete together.
class MpiRequest final : public Communicator::Request {
 public:
  std::vector<MPI_Request> reqs;
  bool test() override {
    int done = 0;
    mpi_check(MPI_Testall(int(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
    return done != 0;
  }
  void wait() override { mpi_check(MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE), "MPI_Waitall"); }
};

// What a single process's collectives leave behind: nothing in flight.
class DoneRequest final : public Communicator::Request {
 public:
  bool test() override { return true; }
  void wait() override {}
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  void all_reduce_sum(float* buf, size_t n) override {
    for (size_t off = 0; off < n; off += kMaxChunk) {
      int count = int(std::min(kMaxChunk, n - off));
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, buf + off, count, MPI_FLOAT, MPI_SUM, comm_), "MPI_Allreduce");
    }
  }
  std::unique_ptr<Request> all_reduce_sum_async(float* buf, size_t n) override {
    auto r = std::make_unique<MpiRequest>();
    for (size_t off = 0; off < n; off += kMaxChunk) {
      int count = int(std::min(kMaxChunk, n - off));
      r->reqs.emplace_back();
      mpi_check(MPI_Iallreduce(MPI_IN_PLACE, buf + off, count, MPI_FLOAT, MPI_SUM, comm_, &r->reqs.back()),
                "MPI_Iallreduce");
    }
    return r;
  }
  // One in-place reduce to each owner of a piece: a bucket holds the pieces of one or a few
  // owners, where MPI_Ireduce_scatter would still involve every rank's (empty) piece and cannot
  // put the result at the piece's own offset.
  std::unique_ptr<Request> reduce_scatter_sum_async(float* buf, const std::vector<size_t>& counts) override {
    auto r = std::make_unique<MpiRequest>();
    float* piece = buf;
    for (int owner = 0; owner < size_; owner++) {
      const size_t n = counts[size_t(owner)];
      for (size_t off = 0; off < n; off += kMaxChunk) {
        int count = int(std::min(kMaxChunk, n - off));
        float* p = piece + off;
        r->reqs.emplace_back();
        mpi_check(MPI_Ireduce(owner == rank_ ? MPI_IN_PLACE : p, p, count, MPI_FLOAT, MPI_SUM, owner, comm_,
                              &r->reqs.back()), "MPI_Ireduce");
      }
      piece += n;
    }
    return r;
  }
  void reduce_scatter_sum(const float* send, float* recv, size_t n) override {
    if (n > kMaxChunk) throw std::runtime_error("reduce_scatter_sum: shard of " + std::to_string(n) + " floats exceeds 2^30");
    mpi_check(MPI_Reduce_scatter_block(send, recv, int(n), MPI_FLOAT, MPI_SUM, comm_), "MPI_Reduce_scatter_block");
  }
  void all_gather(const float* send, float* recv, size_t n) override {
    if (n > kMaxChunk) throw std::runtime_error("all_gather: shard of " + std::to_string(n) + " floats exceeds 2^30");
    mpi_check(MPI_Allgather(send, int(n), MPI_FLOAT, recv, int(n), MPI_FLOAT, comm_), "MPI_Allgather");
  }
  void broadcast(void* buf, size_t bytes, int root) override {
    char* p = static_cast<char*>(buf);
    for (size_t off = 0; off < bytes; off += kMaxChunk) {
      int count = int(std::min(kMaxChunk, bytes - off));
      mpi_check(MPI_Bcast(p + off, count, MPI_BYTE, root, comm_), "MPI_Bcast");
    }
  }
  void barrier() override { mpi_check(MPI_Barrier(comm_), "MPI_Barrier"); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub;
    mpi_check(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split");
    return std::make_unique<MpiCommunicator>(sub, true);
  }

 private:
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
};

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_PROCID"})
    if (std::getenv(v)) return true;
  return false;
}

bool g_started = false;

}  // namespace

void comm_init(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized || !launched_by_mpi()) return;
  // On 2 to 4 ranks Open MPI's non-blocking reduce (libnbc) sends a large message as a chain of
  // 8 KB fragments, one progress round each: thousands of rounds per ZeRO-1 gradient bucket,
  // each waiting for the other rank, many times slower (bench/dp_bench.sh) than its binomial
  // tree, which sends the bucket in one message per round (and which it takes itself above 4
  // ranks). A choice made with mpirun --mca or in the environment stands.
  setenv("OMPI_MCA_coll_libnbc_ireduce_algorithm", "2", 0);
  MPI_Init(argc, argv);
  // errors come back as codes that mpi_check turns into exceptions naming the call
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  g_started = true;
}

void comm_finalize() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (g_started && !finalized) MPI_Finalize();
}

void comm_abort(int status) {
  if (g_started) MPI_Abort(MPI_COMM_WORLD, status);
  std::exit(status);
}

bool comm_is_distributed() {
  if (!g_started) return false;
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size > 1;
}

namespace {

// A single process that was not started by mpirun: every collective is the identity.
class SoloCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "mpi"; }
  void all_reduce_sum(float*, size_t) override {}
  void reduce_scatter_sum(const float* send, float* recv, size_t n) override {
    if (send != recv) std::copy(send, send + n, recv);
  }
  void all_gather(const float* send, float* recv, size_t n) override {
    if (send != recv) std::copy(send, send + n, recv);
  }
  void broadcast(void*, size_t, int) override {}
  std::unique_ptr<Request> all_reduce_sum_async(float*, size_t) override { return std::make_unique<DoneRequest>(); }
  std::unique_ptr<Request> reduce_scatter_sum_async(float*, const std::vector<size_t>&) override {
    return std::make_unique<DoneRequest>();
  }
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<SoloCommunicator>(); }
};

}  // namespace

std::unique_ptr<Communicator> make_world_communicator() {
  if (!g_started) return std::make_unique<SoloCommunicator>();
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
}
