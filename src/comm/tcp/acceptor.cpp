#include "comm/tcp/acceptor.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <list>

#include "comm/group.h"
#include "comm/tcp/tcp_group.h"
#include "comm/tcp/wire.h"

namespace shardlm::comm::tcp {

namespace {
// Unauthenticated connections held at once; beyond that the oldest is dropped, so a flood of
// idle connections cannot exhaust this process's fds.
constexpr size_t kMaxPending = 32;
constexpr size_t kRecentRefusalsKept = 3;
}  // namespace

struct Acceptor::Pending {
  enum class Stage { read_hello, write_reply, read_auth, write_verdict };
  int fd = -1;
  std::string address;
  Clock::time_point deadline;
  Stage stage = Stage::read_hello;
  uint8_t client_hello[kHelloBytes] = {};
  uint8_t server_hello[kHelloBytes] = {};
  uint8_t auth[kAuthBytes] = {};
  uint8_t verdict[kVerdictBytes] = {};
  size_t have = 0;              // bytes of the current read or write stage done
  const uint8_t* out = nullptr;  // what the current write stage sends
  size_t out_bytes = 0;
  bool close_after_write = false;
  bool hand_over_after_write = false;
  ClientHello hello;
  bool finished = false;  // fd handed over or closed; remove from the list
};

Acceptor::Acceptor(AcceptorConfig config) : config_(std::move(config)) {
  ready_.assign(size_t(config_.size), -1);
  claimed_.assign(size_t(config_.size), false);
  set_nonblocking(config_.listen_fd);
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) throw CommError(fmt::format("eventfd failed: {}", std::strerror(errno)));
  thread_ = std::thread([this] { run(); });
}

Acceptor::~Acceptor() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t k = ::write(wake_fd_, &one, sizeof one);
  thread_.join();
  ::close(wake_fd_);
  for (int fd : ready_)
    if (fd >= 0) drain_and_close(fd);
}

int Acceptor::take(int from_rank, Clock::time_point deadline) {
  std::unique_lock lock(mutex_);
  int& slot = ready_[size_t(from_rank)];
  if (!arrived_.wait_until(lock, deadline, [&] { return slot >= 0; })) return -1;
  int fd = slot;
  slot = -1;
  return fd;
}

void Acceptor::set_session(uint64_t session) {
  std::lock_guard lock(mutex_);
  session_ = session;
}

std::string Acceptor::refusals() const {
  std::lock_guard lock(mutex_);
  if (refusal_count_ == 0) return "";
  std::string text = fmt::format("; refused {} connection(s), latest: ", refusal_count_);
  for (size_t i = 0; i < recent_refusals_.size(); ++i) text += (i ? "; " : "") + recent_refusals_[i];
  return text;
}

void Acceptor::refuse(const Pending& p, const std::string& reason) {
  std::lock_guard lock(mutex_);
  ++refusal_count_;
  recent_refusals_.push_back(fmt::format("from {}: {}", p.address, reason));
  if (recent_refusals_.size() > kRecentRefusalsKept) recent_refusals_.pop_front();
}

uint32_t Acceptor::admit(uint32_t from_rank, uint64_t session) {
  std::lock_guard lock(mutex_);
  // Session 0 is for connections made while the group forms; after that it can only come from a
  // newer group on the same endpoints, which must wait until this one is gone.
  bool right_session = session == session_;
  if (!right_session || claimed_[from_rank]) return uint32_t(HandshakeStatus::retry_later);
  claimed_[from_rank] = true;
  return uint32_t(HandshakeStatus::ok);
}

// One step of a connection's handshake, as far as it goes without blocking.
void Acceptor::advance(Pending& p) {
  using Stage = Pending::Stage;
  auto close_now = [&] {
    ::close(p.fd);
    p.finished = true;
  };
  auto start_write = [&](Stage stage, const uint8_t* data, size_t bytes) {
    p.stage = stage;
    p.out = data;
    p.out_bytes = bytes;
    p.have = 0;
  };
  for (;;) {
    if (p.stage == Stage::write_reply || p.stage == Stage::write_verdict) {
      while (p.have < p.out_bytes) {
        ssize_t k = ::send(p.fd, p.out + p.have, p.out_bytes - p.have, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
          p.have += size_t(k);
        } else if (k < 0 && errno == EINTR) {
          continue;
        } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          return;
        } else {
          if (p.hand_over_after_write) {
            std::lock_guard lock(mutex_);
            claimed_[p.hello.from_rank] = false;
          }
          return close_now();
        }
      }
      if (p.close_after_write) return close_now();
      if (p.hand_over_after_write) {
        {
          std::lock_guard lock(mutex_);
          ready_[p.hello.from_rank] = p.fd;
        }
        arrived_.notify_all();
        p.finished = true;
        return;
      }
      p.stage = Stage::read_auth;
      p.have = 0;
      continue;
    }

    uint8_t* buffer = p.stage == Stage::read_hello ? p.client_hello : p.auth;
    // Read the 16-byte prefix alone first: a peer of another version may send a hello of
    // another length and wait for our answer.
    size_t want = p.stage == Stage::read_auth ? kAuthBytes : p.have < kHelloPrefixBytes ? kHelloPrefixBytes : kHelloBytes;
    while (p.have < want) {
      ssize_t k = ::recv(p.fd, buffer + p.have, want - p.have, MSG_DONTWAIT);
      if (k > 0) {
        p.have += size_t(k);
      } else if (k < 0 && errno == EINTR) {
        continue;
      } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return;
      } else {
        return close_now();  // the connector gave up; nothing to report
      }
    }

    if (p.stage == Stage::read_hello && p.have == kHelloPrefixBytes) {
      if (!has_hello_magic(p.client_hello)) {
        refuse(p, "not a shardlm tcp handshake (garbage bytes)");
        return close_now();
      }
      uint32_t version = hello_version(p.client_hello);
      if (version != kTcpProtocolVersion) {
        refuse(p, fmt::format("speaks shardlm tcp protocol version {}, this process speaks {}", version,
                              kTcpProtocolVersion));
        ServerHello reply;
        reply.version = kTcpProtocolVersion;
        reply.status = HandshakeStatus::version_mismatch;
        reply.rank = uint32_t(config_.rank);
        encode(reply, p.server_hello);
        p.close_after_write = true;
        start_write(Stage::write_reply, p.server_hello, kHelloBytes);
      }
      continue;
    }

    if (p.stage == Stage::read_hello) {
      p.hello = decode_client_hello(p.client_hello);
      ServerHello reply;
      reply.version = kTcpProtocolVersion;
      reply.rank = uint32_t(config_.rank);
      reply.group_id = config_.group_id;
      fill_random(reply.nonce.data(), reply.nonce.size());
      const ClientHello& h = p.hello;
      if (h.group_id != config_.group_id || h.group_size != uint32_t(config_.size)) {
        reply.status = HandshakeStatus::other_group;
        refuse(p, fmt::format("claims rank {} of another group (different endpoint list or topology)", h.from_rank));
      } else if (h.to_rank != uint32_t(config_.rank) || h.from_rank >= uint32_t(config_.size) ||
                 h.from_rank == uint32_t(config_.rank)) {
        reply.status = HandshakeStatus::wrong_rank;
        refuse(p, fmt::format("rank {} asked for rank {}, this is rank {}", h.from_rank, h.to_rank, config_.rank));
      }
      encode(reply, p.server_hello);
      p.close_after_write = reply.status != HandshakeStatus::ok;
      start_write(Stage::write_reply, p.server_hello, kHelloBytes);
      continue;
    }

    // Stage::read_auth complete.
    Digest expected = connect_mac(config_.secret, p.server_hello + 32, p.client_hello);
    if (!equal_in_constant_time(expected.data(), p.auth, kAuthBytes)) {
      refuse(p, fmt::format("claims rank {} but does not know the cluster secret", p.hello.from_rank));
      encode_verdict(HandshakeStatus::wrong_secret, Digest{}, p.verdict);
      p.close_after_write = true;
    } else {
      auto status = HandshakeStatus(admit(p.hello.from_rank, p.hello.session));
      bool ok = status == HandshakeStatus::ok;
      encode_verdict(status, ok ? accept_mac(config_.secret, p.client_hello, p.server_hello) : Digest{}, p.verdict);
      p.close_after_write = !ok;
      p.hand_over_after_write = ok;
    }
    start_write(Stage::write_verdict, p.verdict, kVerdictBytes);
  }
}

void Acceptor::run() {
  std::list<Pending> pending;  // list: advance() keeps pointers into the buffers of each entry
  std::vector<pollfd> fds;
  std::vector<Pending*> polled;
  for (;;) {
    fds.clear();
    polled.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    fds.push_back({config_.listen_fd, POLLIN, 0});
    Clock::time_point next_deadline = Clock::time_point::max();
    for (auto& p : pending) {
      bool writing = p.stage == Pending::Stage::write_reply || p.stage == Pending::Stage::write_verdict;
      fds.push_back({p.fd, short(writing ? POLLOUT : POLLIN), 0});
      polled.push_back(&p);
      next_deadline = std::min(next_deadline, p.deadline);
    }
    int wait_ms = next_deadline == Clock::time_point::max() ? -1 : poll_ms_until(next_deadline);
    int ready = ::poll(fds.data(), fds.size(), wait_ms);
    if (ready < 0 && errno != EINTR) {
      refuse(Pending{}, fmt::format("poll failed: {}", std::strerror(errno)));
      break;
    }
    if (fds[0].revents) break;  // the group is being destroyed

    for (size_t i = 0; i < polled.size(); ++i)
      if (fds[i + 2].revents) advance(*polled[i]);

    if (fds[1].revents & POLLIN) {
      for (;;) {
        int fd = ::accept4(config_.listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;  // EAGAIN, or a connection reset before we got to it
        if (pending.size() >= kMaxPending) {
          refuse(pending.front(), "dropped: too many unauthenticated connections at once");
          ::close(pending.front().fd);
          pending.pop_front();
        }
        set_no_delay(fd);
        Pending& p = pending.emplace_back();
        p.fd = fd;
        p.address = remote_address(fd);
        p.deadline = Clock::now() + config_.handshake_timeout;
        advance(p);  // the hello is often there already
      }
    }

    auto now = Clock::now();
    for (auto it = pending.begin(); it != pending.end();) {
      if (!it->finished && now >= it->deadline) {
        refuse(*it, "did not finish the handshake in time");
        ::close(it->fd);
        it->finished = true;
      }
      it = it->finished ? pending.erase(it) : std::next(it);
    }
  }
  for (auto& p : pending)
    if (!p.finished) ::close(p.fd);
}

}  // namespace shardlm::comm::tcp
