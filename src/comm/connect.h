// Creating a Group from a description, whichever backend: the one place the runtime names
// backends (a new backend adds a case here and a folder beside shm/, tcp/, mpi/).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "comm/group.h"

namespace shardlm::comm {

struct GroupSpec {
  std::string backend = "shm";   // shm, tcp, mpi
  std::string topology = "ring"; // tcp: ring or mesh
  int rank = 0, size = 1;
  std::string shm_name;                // shm
  std::vector<std::string> endpoints;  // tcp: host:port of every rank
  int listen_fd = -1;                  // tcp: this rank's pre-bound listening socket, if any
  std::string secret;                  // tcp
  std::chrono::milliseconds timeout = kDefaultTimeout;
};

std::unique_ptr<Group> connect(const GroupSpec& spec);

// Prepares a group of `size` ranks on this host before they start (one process forks the others):
// a fresh shm name, or for tcp one listening socket per rank on 127.0.0.1, bound now so no port
// can be taken in between. Rank r then uses for_rank(r), and close_except(r) in its own process.
struct LocalGroup {
  GroupSpec spec;
  std::vector<int> listen_fds;  // tcp only, index = rank
  GroupSpec for_rank(int rank) const;
  void close_except(int rank);  // closes every listening socket but `rank`'s (-1: all)
};
LocalGroup prepare_local_group(const std::string& backend, const std::string& topology, int size,
                               const std::string& secret, std::chrono::milliseconds timeout);

// Checks backend/topology names; throws Error listing the valid ones.
void check_backend(const std::string& backend, const std::string& topology);
bool mpi_available();

}  // namespace shardlm::comm
