// The connecting side of the tcp handshake (wire.h): connects to a rank, proves this rank knows
// the cluster secret and checks that the peer does too.
#pragma once
#include <cstdint>
#include <string>

#include "comm/tcp/socket_io.h"

namespace shardlm::comm::tcp {

struct ConnectRequest {
  std::string endpoint;  // "host:port" as configured, for messages
  int from_rank = 0;
  int to_rank = 0;
  int group_size = 0;
  uint64_t group_id = 0;
  uint64_t session = 0;
  const std::string* secret = nullptr;
};

// An authenticated, non-blocking connection to `to_rank`. Retries until `deadline` while the peer
// does not listen yet, asks to retry, or belongs to another group (it may still be tearing down an
// older one); throws CommError naming the rank for anything definite (wrong secret, another
// protocol version, garbage bytes) and, at the deadline, with the last reason seen.
int connect_to_rank(const ConnectRequest& request, Clock::time_point deadline);

}  // namespace shardlm::comm::tcp
