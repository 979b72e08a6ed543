#pragma once
// OpenBLAS's pthread build would fan each small GEMM out to its own thread pool from inside our
// OpenMP loops over heads: with 2 threads of each, attention ran 40x slower. Holding a SerialBlas
// keeps OpenBLAS at one thread while the OpenMP tasks run.
#include <cblas.h>

namespace kernels::cpu {

class SerialBlas {
 public:
  SerialBlas() : saved_(openblas_get_num_threads()) { openblas_set_num_threads(1); }
  ~SerialBlas() { openblas_set_num_threads(saved_); }
  SerialBlas(const SerialBlas&) = delete;
  SerialBlas& operator=(const SerialBlas&) = delete;

 private:
  int saved_;
};

}  // namespace kernels::cpu
