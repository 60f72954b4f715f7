// Helpers shared by the MPI backend's tests, which run as ranks of one mpirun job.
#pragma once
#include <chrono>
#include <memory>

#include "comm/group.h"
#include "comm/mpi/mpi_comm_group.h"

namespace shardlm::test {

// The world group made by main(); tests use it only to line ranks up between steps.
comm::Group& test_world();

// A new world group (a communicator of its own), so that a test that breaks one cannot
// disturb the next.
std::unique_ptr<comm::Group> fresh_world(std::chrono::milliseconds timeout = std::chrono::seconds(10));

comm::mpi::MpiGroup& as_mpi(comm::Group& group);

}  // namespace shardlm::test
