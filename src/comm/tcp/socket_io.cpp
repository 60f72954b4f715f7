#include "comm/tcp/socket_io.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "comm/group.h"

namespace shardlm::comm::tcp {

namespace {

// Large enough for a 1-2 MB activation to go out in one call; the kernel caps it at wmem_max/rmem_max.
constexpr int kSocketBufferBytes = 4 << 20;

struct AddrInfoDeleter {
  void operator()(addrinfo* a) const { freeaddrinfo(a); }
};
using AddrInfoList = std::unique_ptr<addrinfo, AddrInfoDeleter>;

AddrInfoList resolve(const std::string& host, int port, bool passive, std::string* why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* found = nullptr;
  std::string service = std::to_string(port);
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &found);
  if (rc != 0) {
    *why = fmt::format("cannot resolve host '{}': {}", host, gai_strerror(rc));
    return nullptr;
  }
  return AddrInfoList(found);
}

bool would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

bool peer_gone(int err) { return err == ECONNRESET || err == EPIPE || err == ECONNABORTED || err == ENOTCONN; }

}  // namespace

Endpoint parse_endpoint(const std::string& text, const std::string& what) {
  size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 == text.size())
    throw CommError(fmt::format("{} '{}' is not host:port", what, text));
  Endpoint e;
  e.host = text.substr(0, colon);
  if (e.host.size() >= 2 && e.host.front() == '[' && e.host.back() == ']') e.host = e.host.substr(1, e.host.size() - 2);
  if (e.host.empty()) throw CommError(fmt::format("{} '{}' has no host", what, text));
  std::string port = text.substr(colon + 1);
  if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    throw CommError(fmt::format("{} '{}' has a bad port '{}'", what, text, port));
  e.port = std::stoi(port);
  if (e.port > 65535) throw CommError(fmt::format("{} '{}' has a port above 65535", what, text));
  return e;
}

int poll_ms_until(Clock::time_point deadline) {
  auto left = deadline - Clock::now();
  if (left <= Clock::duration::zero()) return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return ms > 1'000'000'000 ? 1'000'000'000 : int(ms);
}

void set_socket_buffers(int fd) {
  int size = kSocketBufferBytes;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
}

void set_no_delay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

int listen_socket(const std::string& host, int port, int* bound_port) {
  std::string why;
  AddrInfoList addrs = resolve(host, port, true, &why);
  if (!addrs) throw CommError(fmt::format("cannot listen on {}:{}: {}", host, port, why));
  for (addrinfo* a = addrs.get(); a; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      why = std::strerror(errno);
      continue;
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    set_socket_buffers(fd);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, 128) != 0) {
      why = std::strerror(errno);
      ::close(fd);
      continue;
    }
    if (bound_port) {
      sockaddr_storage local{};
      socklen_t len = sizeof local;
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len);
      *bound_port = local.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&local)->sin6_port)
                                                : ntohs(reinterpret_cast<sockaddr_in*>(&local)->sin_port);
    }
    return fd;
  }
  throw CommError(fmt::format("cannot listen on {}:{}: {}", host, port, why));
}

int connect_before(const Endpoint& to, Clock::time_point deadline, std::string* why) {
  AddrInfoList addrs = resolve(to.host, to.port, false, why);
  if (!addrs) return -1;
  for (addrinfo* a = addrs.get(); a; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) {
      *why = std::strerror(errno);
      continue;
    }
    set_socket_buffers(fd);
    set_no_delay(fd);
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int ready;
      while ((ready = ::poll(&p, 1, poll_ms_until(deadline))) < 0 && errno == EINTR) {
      }
      if (ready == 0) {
        *why = "connect timed out";
        ::close(fd);
        return -1;
      }
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      rc = err == 0 ? 0 : -1;
      errno = err;
    }
    if (rc == 0) return fd;
    *why = std::strerror(errno);
    ::close(fd);
  }
  return -1;
}

IoResult write_all_before(int fd, const void* data, size_t bytes, Clock::time_point deadline, std::string* why) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    ssize_t k = ::send(fd, p, bytes, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k > 0) {
      p += k;
      bytes -= size_t(k);
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && would_block(errno)) {
      pollfd pfd{fd, POLLOUT, 0};
      int ready = ::poll(&pfd, 1, poll_ms_until(deadline));
      if (ready == 0) return IoResult::timed_out;
      continue;
    }
    if (peer_gone(errno)) return IoResult::closed;
    *why = std::strerror(errno);
    return IoResult::failed;
  }
  return IoResult::ok;
}

IoResult read_all_before(int fd, void* data, size_t bytes, Clock::time_point deadline, std::string* why) {
  auto* p = static_cast<uint8_t*>(data);
  while (bytes > 0) {
    ssize_t k = ::recv(fd, p, bytes, MSG_DONTWAIT);
    if (k > 0) {
      p += k;
      bytes -= size_t(k);
      continue;
    }
    if (k == 0) return IoResult::closed;
    if (errno == EINTR) continue;
    if (would_block(errno)) {
      pollfd pfd{fd, POLLIN, 0};
      int ready = ::poll(&pfd, 1, poll_ms_until(deadline));
      if (ready == 0) return IoResult::timed_out;
      continue;
    }
    if (peer_gone(errno)) return IoResult::closed;
    *why = std::strerror(errno);
    return IoResult::failed;
  }
  return IoResult::ok;
}

std::string remote_address(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "an unknown address";
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (addr.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    port = ntohs(a->sin_port);
    return fmt::format("{}:{}", host, port);
  }
  auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
  ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
  return fmt::format("[{}]:{}", host, ntohs(a->sin6_port));
}

void fill_random(void* data, size_t bytes) {
  auto* p = static_cast<uint8_t*>(data);
  while (bytes > 0) {
    ssize_t k = ::getrandom(p, bytes, 0);
    if (k < 0) {
      if (errno == EINTR) continue;
      throw CommError(fmt::format("getrandom failed: {}", std::strerror(errno)));
    }
    p += k;
    bytes -= size_t(k);
  }
}

void drain_and_close(int fd) {
  if (fd < 0) return;
  ::shutdown(fd, SHUT_WR);
  char sink[16384];
  for (int i = 0; i < 64 && ::recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; ++i) {
  }
  ::close(fd);
}

}  // namespace shardlm::comm::tcp
