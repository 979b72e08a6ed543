#pragma once
// Collective communication between training processes, with one interface for both backends:
// MPI over host buffers (CPU training) and NCCL over device buffers (CUDA training; its unique
// id travels over MPI). Every call is collective: all ranks of the communicator make it, in the
// same order, with the same sizes.
#include <cstddef>
#include <memory>
#include <string>

class Communicator {
 public:
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
// buffers are device pointers on the current CUDA device.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& over);
#endif
