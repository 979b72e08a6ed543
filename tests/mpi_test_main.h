#pragma once
// The shared main() of the tests that run under mpiexec (tests/mpi_test_main.cpp): it starts MPI
// around RUN_ALL_TESTS and gives every test the job's communicator.
#include <memory>

#include "trainer/parallel/communicator.h"

extern std::unique_ptr<Communicator> world;
