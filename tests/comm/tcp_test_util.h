// Helpers shared by the tcp backend's tests: a cluster of listening sockets on 127.0.0.1 (bound
// before the ranks fork, so no rank can race another for a port), the names of per-topology test
// instances, and a check that every forked rank passed. Header-only: each *_test.cpp that needs
// them includes this file.
#pragma once
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "comm/tcp/tcp_group.h"
#include "multiprocess.h"

namespace shardlm::test {

// One listening socket per rank on 127.0.0.1, bound to a free port before the ranks fork.
struct LoopbackCluster {
  static constexpr const char* kSecret = "test-cluster-secret";

  std::vector<int> fds;
  std::vector<std::string> endpoints;
  std::chrono::milliseconds timeout;  // of every group made from options()

  explicit LoopbackCluster(int n, std::chrono::milliseconds group_timeout = std::chrono::seconds(20))
      : timeout(group_timeout) {
    for (int r = 0; r < n; ++r) {
      int port = 0;
      fds.push_back(comm::tcp_listen("127.0.0.1", 0, &port));
      endpoints.push_back(fmt::format("127.0.0.1:{}", port));
    }
  }
  ~LoopbackCluster() {
    for (int fd : fds) ::close(fd);
  }
  LoopbackCluster(const LoopbackCluster&) = delete;
  LoopbackCluster& operator=(const LoopbackCluster&) = delete;

  comm::TcpGroupOptions options(int rank, comm::TcpTopology topology = comm::TcpTopology::Ring) const {
    comm::TcpGroupOptions o;
    o.endpoints = endpoints;
    o.rank = rank;
    o.topology = topology;
    o.secret = kSecret;
    o.timeout = timeout;
    o.listen_fd = fds[size_t(rank)];
    return o;
  }
};

// Names the instances of a test run once per topology: Topologies/Suite.Test/Ring and .../Mesh.
inline std::string topology_name(const ::testing::TestParamInfo<comm::TcpTopology>& info) {
  return info.param == comm::TcpTopology::Ring ? "Ring" : "Mesh";
}

}  // namespace shardlm::test

// A macro, not a function, so that a failure is reported at the test's line.
#define EXPECT_RANKS_PASS(outcomes)                                        \
  do {                                                                     \
    std::string report;                                                    \
    EXPECT_TRUE(::shardlm::test::all_passed(outcomes, &report)) << report; \
  } while (0)
