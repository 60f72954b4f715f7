#include "runtime/control_link.h"

#include <unistd.h>

#include <cstring>
#include <thread>

#include "comm/group.h"
#include "comm/tcp/sha256.h"
#include "comm/tcp/socket_io.h"
#include "core/error.h"
#include "formats/json_error.h"

namespace shardlm {

namespace tcp = comm::tcp;

namespace {
struct Hello {
  uint32_t magic = kControlMagic;
  uint32_t version = kControlVersion;
  uint8_t nonce[32] = {};
};
constexpr uint32_t kMaxMessage = 1 << 20;

tcp::Clock::time_point deadline_after(std::chrono::milliseconds t) { return tcp::Clock::now() + t; }
}  // namespace

ControlLink::~ControlLink() {
  if (fd_ >= 0) ::close(fd_);
}

void ControlLink::write(const void* data, size_t bytes, std::chrono::milliseconds timeout) {
  std::string why;
  if (tcp::write_all_before(fd_, data, bytes, deadline_after(timeout), &why) != tcp::IoResult::ok)
    throw comm::CommError(fmt::format("control connection to {}: {}", peer_, why.empty() ? "closed" : why));
}

void ControlLink::read(void* data, size_t bytes, std::chrono::milliseconds timeout) {
  std::string why;
  auto r = tcp::read_all_before(fd_, data, bytes, deadline_after(timeout), &why);
  if (r == tcp::IoResult::closed) throw comm::CommError(fmt::format("{} closed the control connection", peer_));
  if (r != tcp::IoResult::ok) throw comm::CommError(fmt::format("control connection to {}: {}", peer_, why));
}

bool ControlLink::accept_handshake(const std::string& secret, std::chrono::milliseconds timeout, std::string* why) {
  try {
    Hello hello;
    tcp::fill_random(hello.nonce, sizeof hello.nonce);
    write(&hello, sizeof hello, timeout);
    Hello answer_header;
    uint8_t answer[32];
    read(&answer_header, sizeof answer_header, timeout);
    if (answer_header.magic != kControlMagic) {
      *why = "not a shardlm coordinator (bad magic)";
      return false;
    }
    if (answer_header.version != kControlVersion) {
      *why = fmt::format("control protocol version {} (this worker speaks {})", answer_header.version, kControlVersion);
      return false;
    }
    read(answer, sizeof answer, timeout);
    auto expected = tcp::hmac_sha256(secret.data(), secret.size(), hello.nonce, sizeof hello.nonce);
    if (!tcp::equal_in_constant_time(expected.data(), answer, sizeof answer)) {
      *why = "wrong cluster secret";
      uint8_t verdict = 0;
      write(&verdict, 1, timeout);
      return false;
    }
    uint8_t verdict = 1;
    write(&verdict, 1, timeout);
    return true;
  } catch (const comm::CommError& e) {
    *why = e.what();
    return false;
  }
}

void ControlLink::connect_handshake(const std::string& secret, std::chrono::milliseconds timeout) {
  Hello hello;
  read(&hello, sizeof hello, timeout);
  if (hello.magic != kControlMagic) fail("{} is not a shardlm worker", peer_);
  if (hello.version != kControlVersion)
    fail("worker {} speaks control protocol version {}, this shardlm speaks {}", peer_, hello.version, kControlVersion);
  auto mac = tcp::hmac_sha256(secret.data(), secret.size(), hello.nonce, sizeof hello.nonce);
  Hello header;
  write(&header, sizeof header, timeout);
  write(mac.data(), mac.size(), timeout);
  uint8_t verdict = 0;
  read(&verdict, 1, timeout);
  if (verdict != 1) fail("worker {} refused the connection: wrong cluster secret", peer_);
}

void ControlLink::send_json(const nlohmann::json& j, std::chrono::milliseconds timeout) {
  std::string text = j.dump();
  uint32_t len = uint32_t(text.size());
  write(&len, 4, timeout);
  write(text.data(), text.size(), timeout);
}

nlohmann::json ControlLink::recv_json(std::chrono::milliseconds timeout) {
  uint32_t len = 0;
  read(&len, 4, timeout);
  if (len > kMaxMessage) throw comm::CommError(fmt::format("{} sent a control message of {} bytes", peer_, len));
  std::string text(len, '\0');
  read(text.data(), len, timeout);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw comm::CommError(fmt::format("{} sent a malformed control message: {}", peer_, json_error_text(e)));
  }
}

ControlLink connect_to_worker(const std::string& endpoint, const std::string& secret, std::chrono::milliseconds timeout) {
  tcp::Endpoint to = tcp::parse_endpoint(endpoint, "worker");
  auto deadline = deadline_after(timeout);
  std::string why;
  for (;;) {
    int fd = tcp::connect_before(to, deadline, &why);
    if (fd >= 0) {
      ControlLink link(fd, endpoint);
      link.connect_handshake(secret, timeout);
      return link;
    }
    if (tcp::Clock::now() >= deadline)
      throw comm::CommError(fmt::format("cannot reach worker {}: {}", endpoint, why.empty() ? "timed out" : why));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace shardlm
