// Data parallelism under mpiexec (-n 2 and -n 4) on cpu, over MPI: the checks of
// data_parallel_checks.h (N ranks equal one process with the global batch, ZeRO-1 equals
// unsharded AdamW, buckets during the backward equal one reduction after it).
#include <gtest/gtest.h>

#include "tests/mpi_test_main.h"
#include "tests/trainer/parallel/data_parallel_checks.h"

namespace {

TEST(DataParallel, Zero1EqualsUnshardedAdamW) { dp_checks::zero1_equals_unsharded_adamw(*world, cpu_backend()); }

TEST(DataParallel, RanksEqualOneProcessWithTheGlobalBatch) {
  dp_checks::ranks_equal_one_process(*world, cpu_backend(), 0, 1e-5f);
}

TEST(DataParallel, BucketsDuringTheBackwardEqualOneReductionAfterIt) {
  dp_checks::buckets_equal_one_reduction(*world, cpu_backend());
}

}  // namespace
