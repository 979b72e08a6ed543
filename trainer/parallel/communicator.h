#pragma once
// Collective communication between training processes, with one interface for both backends:
// MPI over host buffers (CPU training) and NCCL over device buffers (CUDA training; its unique
// id travels over MPI). Every call is collective: all ranks of the communicator make it, in the
// same order, with the same sizes.
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

class Communicator {
 public:
  // A non-blocking collective in flight. Its buffer must be neither read nor written until wait()
  // returns. Requests of one communicator may be waited for in any order.
  class Request {
   public:
    virtual ~Request() = default;
    // Lets the collective progress (MPI moves data only inside MPI calls); true once it is done.
    virtual bool test() = 0;
    // MPI: returns when the buffer holds the result. NCCL: the default stream waits for it (the
    // host does not), so the kernels launched after wait() see the result.
    virtual void wait() = 0;
  };

  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "mpi" | "nccl"

  // buf (n): every rank ends with the element-wise sum over ranks.
  virtual void all_reduce_sum(float* buf, size_t n) = 0;
  // send (size() * n): rank r ends with recv (n) = the sum over ranks of send[r*n, (r+1)*n).
  virtual void reduce_scatter_sum(const float* send, float* recv, size_t n) = 0;
  // send (n) from every rank: recv (size() * n) holds them in rank order.
  virtual void all_gather(const float* send, float* recv, size_t n) = 0;
  virtual void broadcast(void* buf, size_t bytes, int root) = 0;
  // Non-blocking forms, to overlap communication with compute (data-parallel gradient buckets
  // during the backward). NCCL runs them on a communication stream that first waits for the work
  // already on the default stream.
  // all_reduce_sum, started now.
  virtual std::unique_ptr<Request> all_reduce_sum_async(float* buf, size_t n) = 0;
  // buf holds consecutive pieces, piece r of counts[r] floats (counts has size() entries, zeros
  // allowed): rank r ends with the sum over ranks of its piece, in place, and every other piece
  // as it was. A reduce-scatter with uneven pieces: ZeRO-1 sends each part of a gradient bucket
  // to the rank that owns it.
  virtual std::unique_ptr<Request> reduce_scatter_sum_async(float* buf, const std::vector<size_t>& counts) = 0;
  virtual void barrier() = 0;
  // The ranks with the same `color` form a new communicator, ordered by `key`.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
};

// Starts MPI when this process was launched by mpirun/srun (Open MPI or PMI variables present);
// otherwise nothing happens and world() is a 1-rank communicator. Safe to call more than once.
void comm_init(int* argc, char*** argv);
void comm_finalize();
// On an error in one rank: stop every rank (MPI_Abort) so that none waits forever in a collective.
[[noreturn]] void comm_abort(int status);
bool comm_is_distributed();  // launched with more than one rank

// All processes of the job, over MPI (host buffers).
std::unique_ptr<Communicator> make_world_communicator();

#ifdef KVMTRAIN_HAS_CUDA
// NCCL over the ranks of `over` (rank 0 creates the unique id and broadcasts it through `over`);
// buffers are device pointers on the current CUDA device. Every NCCL communicator of the process
// (split ones too) runs its collectives on one shared stream, one at a time in the order they were
// issued: NCCL gives no progress guarantee to collectives of different communicators in flight
// together (comm_nccl.cpp).
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& over);
#endif
