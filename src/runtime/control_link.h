// The control connection between rank 0 and a `shardlm worker` on another machine: the worker
// proves nothing, the coordinator proves it knows the cluster secret (HMAC of a fresh nonce),
// then they exchange a few length-prefixed JSON messages (the job, the worker's group port, the
// endpoints of every rank). Every read and write has a deadline.
#pragma once
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

namespace shardlm {

constexpr uint32_t kControlMagic = 0x4c4d5343;  // "CSML"
constexpr uint32_t kControlVersion = 1;

class ControlLink {
 public:
  explicit ControlLink(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {}
  ~ControlLink();
  ControlLink(ControlLink&& o) noexcept : fd_(o.fd_), peer_(std::move(o.peer_)) { o.fd_ = -1; }
  ControlLink(const ControlLink&) = delete;

  // Worker side: sends the challenge and checks the answer. False (and a reason) for a wrong
  // secret or a peer speaking something else.
  bool accept_handshake(const std::string& secret, std::chrono::milliseconds timeout, std::string* why);
  // Coordinator side: answers the challenge; throws Error naming the worker if refused.
  void connect_handshake(const std::string& secret, std::chrono::milliseconds timeout);

  void send_json(const nlohmann::json& j, std::chrono::milliseconds timeout);
  nlohmann::json recv_json(std::chrono::milliseconds timeout);
  const std::string& peer() const { return peer_; }
  int fd() const { return fd_; }

 private:
  void write(const void* data, size_t bytes, std::chrono::milliseconds timeout);
  void read(void* data, size_t bytes, std::chrono::milliseconds timeout);
  int fd_;
  std::string peer_;
};

// Coordinator: connects to a worker at "host:port" within the timeout (retrying while it is not
// listening yet) and completes the handshake.
ControlLink connect_to_worker(const std::string& endpoint, const std::string& secret, std::chrono::milliseconds timeout);

}  // namespace shardlm
