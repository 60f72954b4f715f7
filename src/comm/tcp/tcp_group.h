// The tcp backend of Group: ranks on any hosts, one TCP connection per direction between each
// pair that talks. Ring connects each rank to its two neighbours and opens other connections
// when a send or recv first names that peer; Mesh connects every pair at start and reduces small
// messages directly (one hop instead of 2(n-1)).
//
// Every connection starts with a handshake (magic, protocol version, group id, ranks) that
// proves both ends know the cluster secret (HMAC-SHA256 challenge-response), so a stranger or a
// rank of another cluster can neither join nor break the group. wire.h has the byte layout.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/group.h"

namespace shardlm::comm {

enum class TcpTopology { Ring, Mesh };

constexpr size_t kTcpMeshDirectMaxBytes = 128 << 10;

struct TcpGroupOptions {
  std::vector<std::string> endpoints;  // "host:port" of every rank, index = rank
  int rank = 0;
  TcpTopology topology = TcpTopology::Ring;
  std::string secret;                  // shared cluster secret; required non-empty
  std::chrono::milliseconds timeout = kDefaultTimeout;
  int listen_fd = -1;                  // an already bound+listening socket for endpoints[rank]
                                       // (lets tests and launchers pick port 0 first); -1: bind here.
                                       // The group sets it non-blocking and never closes it; one
                                       // group at a time may use it.
  // Mesh only: an all-reduce goes direct (one hop) while each rank sends at most this many bytes
  // that way (its buffer times ranks - 1), round the ring above. The default is the crossover
  // measured on loopback by tests/bench/tcp_allreduce_bench.cpp; a real link may move it.
  size_t mesh_direct_max_bytes = kTcpMeshDirectMaxBytes;
};

// Forms the group: returns once this rank is connected and authenticated to its neighbours
// (Ring) or to every rank (Mesh), or throws CommError naming the rank it could not reach.
std::unique_ptr<Group> make_tcp_group(const TcpGroupOptions& options);

// Binds a listening socket on host:port (port 0 = any free port); returns fd and the real port.
int tcp_listen(const std::string& host, int port, int* bound_port);

// Protocol version carried in the handshake; bump on any wire change.
constexpr uint32_t kTcpProtocolVersion = 1;

}  // namespace shardlm::comm
