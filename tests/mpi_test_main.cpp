#include "tests/mpi_test_main.h"

#include <gtest/gtest.h>

std::unique_ptr<Communicator> world;

int main(int argc, char** argv) {
  comm_init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  world = make_world_communicator();
  int rc = RUN_ALL_TESTS();
  world.reset();
  comm_finalize();
  return rc;
}
