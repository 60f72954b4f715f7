#include "comm/tcp/connector.h"

#include <unistd.h>

#include <algorithm>
#include <thread>

#include "comm/group.h"
#include "comm/tcp/tcp_group.h"
#include "comm/tcp/wire.h"

namespace shardlm::comm::tcp {

namespace {

enum class Attempt { connected, retry };

// Closes the fd unless released: every early return and throw of an attempt closes its socket.
struct FdGuard {
  int fd;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
  int release() { return std::exchange(fd, -1); }
};

Attempt attempt(const ConnectRequest& r, const Endpoint& to, Clock::time_point deadline, int* out, std::string* why) {
  FdGuard fd{connect_before(to, deadline, why)};
  if (fd.fd < 0) return Attempt::retry;  // not listening yet, most often

  ClientHello hello;
  hello.version = kTcpProtocolVersion;
  hello.group_id = r.group_id;
  hello.session = r.session;
  hello.from_rank = uint32_t(r.from_rank);
  hello.to_rank = uint32_t(r.to_rank);
  hello.group_size = uint32_t(r.group_size);
  fill_random(hello.nonce.data(), hello.nonce.size());
  uint8_t hello_bytes[kHelloBytes];
  encode(hello, hello_bytes);

  auto io_failed = [&](IoResult result, const char* stage) {
    *why = result == IoResult::timed_out ? fmt::format("no answer to the {}", stage)
           : result == IoResult::closed  ? fmt::format("connection closed during the {}", stage)
                                         : fmt::format("{} during the {}", *why, stage);
    return Attempt::retry;
  };

  IoResult io = write_all_before(fd.fd, hello_bytes, kHelloBytes, deadline, why);
  if (io != IoResult::ok) return io_failed(io, "hello");
  uint8_t reply_bytes[kHelloBytes];
  io = read_all_before(fd.fd, reply_bytes, kHelloPrefixBytes, deadline, why);
  if (io != IoResult::ok) return io_failed(io, "hello");
  if (!has_hello_magic(reply_bytes))
    throw CommError(fmt::format("rank {} at {} answered with bytes that are not a shardlm tcp handshake "
                                "(another program on that port?)",
                                r.to_rank, r.endpoint));
  uint32_t version = hello_version(reply_bytes);
  if (version != kTcpProtocolVersion)
    throw CommError(fmt::format("rank {} at {} speaks shardlm tcp protocol version {}, this process speaks {}",
                                r.to_rank, r.endpoint, version, kTcpProtocolVersion));
  io = read_all_before(fd.fd, reply_bytes + kHelloPrefixBytes, kHelloBytes - kHelloPrefixBytes, deadline, why);
  if (io != IoResult::ok) return io_failed(io, "hello");
  ServerHello reply = decode_server_hello(reply_bytes);
  switch (reply.status) {
    case HandshakeStatus::ok:
      break;
    case HandshakeStatus::other_group:
      // Also what a rank sees while its peer still tears down a previous group on the same port
      // (another topology, say), so it is retried; only a lasting one is a misconfiguration.
      *why = "it belongs to another group (its endpoint list or topology differs)";
      return Attempt::retry;
    case HandshakeStatus::wrong_rank:
      throw CommError(fmt::format("the process at {} (rank {} of the endpoint list) refused rank {}: it is rank {}",
                                  r.endpoint, r.to_rank, r.from_rank, reply.rank));
    case HandshakeStatus::version_mismatch:  // cannot happen with equal versions
    default:
      throw CommError(fmt::format("rank {} at {} refused the connection (status {})", r.to_rank, r.endpoint,
                                  uint32_t(reply.status)));
  }
  if (reply.group_id != r.group_id || reply.rank != uint32_t(r.to_rank))
    throw CommError(fmt::format("the process at {} is rank {} of another group, not rank {} of this one", r.endpoint,
                                reply.rank, r.to_rank));

  Digest auth = connect_mac(*r.secret, reply_bytes + 32, hello_bytes);
  io = write_all_before(fd.fd, auth.data(), auth.size(), deadline, why);
  if (io != IoResult::ok) return io_failed(io, "authentication");
  uint8_t verdict[kVerdictBytes];
  io = read_all_before(fd.fd, verdict, kVerdictBytes, deadline, why);
  if (io != IoResult::ok) return io_failed(io, "authentication");
  switch (verdict_status(verdict)) {
    case HandshakeStatus::ok:
      break;
    case HandshakeStatus::wrong_secret:
      throw CommError(fmt::format("rank {} at {} refused the connection: wrong cluster secret", r.to_rank, r.endpoint));
    case HandshakeStatus::retry_later:
      *why = "it asked to retry (still busy with an older group on that port?)";
      return Attempt::retry;
    default:
      throw CommError(fmt::format("rank {} at {} refused the connection (status {})", r.to_rank, r.endpoint,
                                  uint32_t(verdict_status(verdict))));
  }
  Digest expected = accept_mac(*r.secret, hello_bytes, reply_bytes);
  if (!equal_in_constant_time(expected.data(), verdict + 8, expected.size()))
    throw CommError(fmt::format("the process at {} does not know the cluster secret: it is not the genuine rank {}",
                                r.endpoint, r.to_rank));
  *out = fd.release();
  return Attempt::connected;
}

}  // namespace

int connect_to_rank(const ConnectRequest& r, Clock::time_point deadline) {
  Endpoint to = parse_endpoint(r.endpoint, fmt::format("endpoint of rank {}", r.to_rank));
  auto pause = std::chrono::milliseconds(5);
  std::string why = "no attempt made";
  auto started = Clock::now();
  for (;;) {
    int fd = -1;
    if (attempt(r, to, deadline, &fd, &why) == Attempt::connected) return fd;
    auto now = Clock::now();
    if (now >= deadline) break;
    // The last pause ends at the deadline: no final attempt whose only news would be "timed out".
    std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - now));
    if (Clock::now() >= deadline) break;
    pause = std::min(pause * 2, std::chrono::milliseconds(200));
  }
  double waited = std::chrono::duration<double>(Clock::now() - started).count();
  throw CommError(fmt::format("could not connect to rank {} at {} within {:.1f} s: {}", r.to_rank, r.endpoint, waited, why));
}

}  // namespace shardlm::comm::tcp
