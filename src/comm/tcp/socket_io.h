// Plain socket helpers of the tcp backend: endpoints, listening, connecting, and reads/writes that
// never wait past a deadline.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace shardlm::comm::tcp {

using Clock = std::chrono::steady_clock;

struct Endpoint {
  std::string host;  // without the brackets of "[::1]:5000"
  int port = 0;
};

// "host:port" or "[v6addr]:port"; throws CommError naming `text` and `what` (e.g. "endpoint of rank 2").
Endpoint parse_endpoint(const std::string& text, const std::string& what);

// Bound + listening socket (SO_REUSEADDR, large buffers); throws CommError naming host:port.
int listen_socket(const std::string& host, int port, int* bound_port);

// Milliseconds left until `deadline` for poll(): 0 when passed, rounded up otherwise.
int poll_ms_until(Clock::time_point deadline);

// Socket buffers and TCP_NODELAY for a data connection (or a listener, whose accepted sockets
// inherit them; buffers must be set before the connection exists for the window scale to use them).
void set_socket_buffers(int fd);
void set_no_delay(int fd);
void set_nonblocking(int fd);

// Non-blocking connect bounded by `deadline`. Returns the fd (non-blocking) or -1 with the reason
// (connection refused or unreachable: the peer may not listen yet, so callers retry).
int connect_before(const Endpoint& to, Clock::time_point deadline, std::string* why);

enum class IoResult { ok, closed, timed_out, failed };
// Whole-buffer read/write on a non-blocking socket, waiting with poll() until `deadline`.
IoResult write_all_before(int fd, const void* data, size_t bytes, Clock::time_point deadline, std::string* why);
IoResult read_all_before(int fd, void* data, size_t bytes, Clock::time_point deadline, std::string* why);

// "10.0.0.2:41234" of the remote end, for messages about strangers.
std::string remote_address(int fd);

// Random bytes from the kernel (nonces, session ids).
void fill_random(void* data, size_t bytes);

// Best-effort orderly close: pending input is drained first, because closing a socket with unread
// input makes Linux send a reset that can discard data the peer has not read yet.
void drain_and_close(int fd);

}  // namespace shardlm::comm::tcp
