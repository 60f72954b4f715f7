// The accepting side of the tcp handshake, on a thread of its own so that a peer's connect never
// waits for this rank's main thread (which may be busy computing), and so that strangers, port
// scanners and slow clients are dealt with without ever blocking the group.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "comm/tcp/socket_io.h"

namespace shardlm::comm::tcp {

struct AcceptorConfig {
  int listen_fd = -1;  // set non-blocking here; not closed here
  int rank = 0;
  int size = 0;
  uint64_t group_id = 0;
  std::string secret;
  std::chrono::milliseconds handshake_timeout{60000};
};

class Acceptor {
 public:
  explicit Acceptor(AcceptorConfig config);
  ~Acceptor();  // stops and joins the thread; closes connections nobody took
  Acceptor(const Acceptor&) = delete;
  Acceptor& operator=(const Acceptor&) = delete;

  // The authenticated connection from `from_rank` (ownership passes to the caller), waiting
  // until `deadline`; -1 if it has not arrived by then.
  int take(int from_rank, Clock::time_point deadline);
  // Once the group has formed, only connections that carry its session id are admitted: a rank
  // of a newer group on the same listening socket is told to retry until that group accepts it.
  void set_session(uint64_t session);
  // What was refused so far, for timeout messages: "; refused 1 connection(s): from ...".
  std::string refusals() const;

 private:
  struct Pending;
  void run();
  void advance(Pending& p);
  void refuse(const Pending& p, const std::string& reason);
  uint32_t admit(uint32_t from_rank, uint64_t session);  // a HandshakeStatus

  AcceptorConfig config_;
  int wake_fd_ = -1;
  mutable std::mutex mutex_;
  std::condition_variable arrived_;
  std::vector<int> ready_;     // by rank: an authenticated fd not yet taken, or -1
  std::vector<bool> claimed_;  // by rank: a connection was admitted (one per rank and group)
  uint64_t session_ = 0;
  size_t refusal_count_ = 0;
  std::deque<std::string> recent_refusals_;
  std::thread thread_;
};

}  // namespace shardlm::comm::tcp
