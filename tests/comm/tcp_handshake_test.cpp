// The tcp handshake against strangers: a wrong cluster secret, an impostor that accepts without
// knowing the secret, another protocol version, garbage bytes and idle connections. The group
// must refuse them with an error that names the rank, and keep waiting for the genuine peer.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "comm/tcp/socket_io.h"
#include "comm/tcp/tcp_group.h"
#include "comm/tcp/wire.h"
#include "multiprocess.h"

namespace shardlm::comm {
namespace {

using namespace std::chrono_literals;

struct LoopbackCluster {
  std::vector<int> fds;
  std::vector<std::string> endpoints;
  explicit LoopbackCluster(int n) {
    for (int r = 0; r < n; ++r) {
      int port = 0;
      fds.push_back(tcp_listen("127.0.0.1", 0, &port));
      endpoints.push_back(fmt::format("127.0.0.1:{}", port));
    }
  }
  ~LoopbackCluster() {
    for (int fd : fds) ::close(fd);
  }
  TcpGroupOptions options(int rank, TcpTopology topology = TcpTopology::Ring) const {
    TcpGroupOptions o;
    o.endpoints = endpoints;
    o.rank = rank;
    o.topology = topology;
    o.secret = "the genuine secret";
    o.timeout = 20s;
    o.listen_fd = fds[size_t(rank)];
    return o;
  }
};

#define EXPECT_RANKS_PASS(outcomes)                             \
  do {                                                          \
    std::string report;                                         \
    EXPECT_TRUE(test::all_passed(outcomes, &report)) << report; \
  } while (0)

// Blocking socket to 127.0.0.1:port.
int dial(const std::string& endpoint) {
  std::string why;
  int fd = tcp::connect_before(tcp::parse_endpoint(endpoint, "test"), tcp::Clock::now() + 5s, &why);
  if (fd < 0) throw std::runtime_error("cannot connect to " + endpoint + ": " + why);
  return fd;
}

bool read_exactly(int fd, void* data, size_t bytes) {
  std::string why;
  return tcp::read_all_before(fd, data, bytes, tcp::Clock::now() + 5s, &why) == tcp::IoResult::ok;
}

void write_exactly(int fd, const void* data, size_t bytes) {
  std::string why;
  ASSERT_EQ(tcp::write_all_before(fd, data, bytes, tcp::Clock::now() + 5s, &why), tcp::IoResult::ok);
}

// True when the peer closes the connection (EOF or reset) within 5 s.
bool closed_by_peer(int fd) {
  char c;
  std::string why;
  return tcp::read_all_before(fd, &c, 1, tcp::Clock::now() + 5s, &why) == tcp::IoResult::closed;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const CommError& e) {
    return e.what();
  }
  return "(no error)";
}

// A fake rank 1 in a thread of this process: accepts one connection on `listen_fd` and answers
// the hello with `reply` (then, if `then` is set, plays the rest of the exchange).
struct FakePeer {
  std::thread thread;
  FakePeer(int listen_fd, std::function<void(int fd)> play) {
    thread = std::thread([listen_fd, play] {
      int fd = ::accept(listen_fd, nullptr, nullptr);
      if (fd < 0) return;
      play(fd);
      ::close(fd);
    });
  }
  ~FakePeer() { thread.join(); }
};

TEST(TcpHandshake, OtherProtocolVersionIsNamedWithBothVersions) {
  LoopbackCluster cluster(2);
  FakePeer fake(cluster.fds[1], [](int fd) {
    uint8_t hello[tcp::kHelloBytes];
    if (!read_exactly(fd, hello, sizeof hello)) return;
    tcp::ServerHello reply;
    reply.version = 2;
    reply.rank = 1;
    uint8_t bytes[tcp::kHelloBytes];
    tcp::encode(reply, bytes);
    write_exactly(fd, bytes, sizeof bytes);
  });
  std::string what = error_of([&] { make_tcp_group(cluster.options(0)); });
  EXPECT_EQ(what, fmt::format("rank 1 at {} speaks shardlm tcp protocol version 2, this process speaks 1",
                              cluster.endpoints[1]));
}

TEST(TcpHandshake, GarbageAnswerIsNamed) {
  LoopbackCluster cluster(2);
  FakePeer fake(cluster.fds[1], [](int fd) {
    const char http[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    write_exactly(fd, http, sizeof http - 1);
  });
  std::string what = error_of([&] { make_tcp_group(cluster.options(0)); });
  EXPECT_EQ(what, fmt::format("rank 1 at {} answered with bytes that are not a shardlm tcp handshake (another program "
                              "on that port?)",
                              cluster.endpoints[1]));
}

TEST(TcpHandshake, ImpostorThatAcceptsWithoutTheSecretIsDetected) {
  LoopbackCluster cluster(2);
  FakePeer fake(cluster.fds[1], [](int fd) {
    uint8_t hello[tcp::kHelloBytes];
    if (!read_exactly(fd, hello, sizeof hello)) return;
    tcp::ServerHello reply;  // a perfect imitation, except that it cannot compute the MAC
    reply.version = kTcpProtocolVersion;
    reply.rank = 1;
    reply.group_id = tcp::decode_client_hello(hello).group_id;
    uint8_t bytes[tcp::kHelloBytes];
    tcp::encode(reply, bytes);
    write_exactly(fd, bytes, sizeof bytes);
    uint8_t auth[tcp::kAuthBytes];
    if (!read_exactly(fd, auth, sizeof auth)) return;
    uint8_t verdict[tcp::kVerdictBytes];
    tcp::encode_verdict(tcp::HandshakeStatus::ok, tcp::Digest{}, verdict);
    write_exactly(fd, verdict, sizeof verdict);
  });
  std::string what = error_of([&] { make_tcp_group(cluster.options(0)); });
  EXPECT_EQ(what, fmt::format("the process at {} does not know the cluster secret: it is not the genuine rank 1",
                              cluster.endpoints[1]));
}

TEST(TcpHandshake, AcceptorAnswersStrangersAndReportsThem) {
  // Rank 0 forms a group whose rank 1 never answers; meanwhile strangers knock on rank 0's port.
  LoopbackCluster cluster(2);
  auto options = cluster.options(0);
  options.timeout = 1500ms;
  std::string what;
  std::thread rank0([&] { what = error_of([&] { make_tcp_group(options); }); });
  std::this_thread::sleep_for(100ms);

  int garbage = dial(cluster.endpoints[0]);
  write_exactly(garbage, "GET / HTTP/1.0\r\n\r\n", 18);
  EXPECT_TRUE(closed_by_peer(garbage)) << "garbage bytes were not answered by closing";
  ::close(garbage);

  // A client of protocol version 2 learns that this side speaks version 1.
  int future = dial(cluster.endpoints[0]);
  tcp::ClientHello hello;
  hello.version = 2;
  uint8_t bytes[tcp::kHelloBytes];
  tcp::encode(hello, bytes);
  write_exactly(future, bytes, tcp::kHelloPrefixBytes);  // another version may send another length
  uint8_t reply[tcp::kHelloBytes];
  ASSERT_TRUE(read_exactly(future, reply, sizeof reply));
  tcp::ServerHello answer = tcp::decode_server_hello(reply);
  EXPECT_TRUE(tcp::has_hello_magic(reply));
  EXPECT_EQ(answer.version, kTcpProtocolVersion);
  EXPECT_EQ(answer.status, tcp::HandshakeStatus::version_mismatch);
  EXPECT_TRUE(closed_by_peer(future));
  ::close(future);

  rank0.join();
  std::printf("rank 0 reported: %s\n", what.c_str());
  EXPECT_NE(what.find(fmt::format("could not connect to rank 1 at {}", cluster.endpoints[1])), std::string::npos)
      << what;
  EXPECT_NE(what.find("refused 2 connection(s)"), std::string::npos) << what;
  EXPECT_NE(what.find("not a shardlm tcp handshake"), std::string::npos) << what;
  EXPECT_NE(what.find("speaks shardlm tcp protocol version 2, this process speaks 1"), std::string::npos) << what;
}

class TcpStrangerTest : public ::testing::TestWithParam<TcpTopology> {};
INSTANTIATE_TEST_SUITE_P(Topologies, TcpStrangerTest, ::testing::Values(TcpTopology::Ring, TcpTopology::Mesh),
                         [](const auto& info) { return info.param == TcpTopology::Ring ? "Ring" : "Mesh"; });

TEST_P(TcpStrangerTest, WrongSecretIsRefusedAndTheGenuineRankJoinsAfter) {
  // Process 2 claims to be rank 1 with the wrong secret while rank 0 is forming; the genuine
  // rank 1 starts only once the impostor has been refused.
  LoopbackCluster cluster(2);
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  auto outcomes = test::run_ranks(3, [&](int process) {
    if (process == 2) {
      for (int fd : cluster.fds) ::close(fd);
      auto options = cluster.options(0, GetParam());
      options.rank = 1;
      options.secret = "a guess";
      int port;
      options.listen_fd = tcp_listen("127.0.0.1", 0, &port);
      options.timeout = 5s;
      std::string what = error_of([&] { make_tcp_group(options); });
      EXPECT_EQ(what, fmt::format("rank 0 at {} refused the connection: wrong cluster secret", cluster.endpoints[0]));
      ::close(options.listen_fd);
      ASSERT_EQ(::write(go[1], "g", 1), 1);
      return;
    }
    if (process == 1) {
      char c;
      ASSERT_EQ(::read(go[0], &c, 1), 1);
    }
    auto g = make_tcp_group(cluster.options(process, GetParam()));
    std::vector<float> v(1000, float(process + 1));
    g->all_reduce_sum(v.data(), v.size());
    EXPECT_EQ(v[999], 3.0f);
  });
  ::close(go[0]);
  ::close(go[1]);
  EXPECT_RANKS_PASS(outcomes);
}

TEST_P(TcpStrangerTest, StrangersOnThePortDoNotBreakTheGroup) {
  // Process 2 keeps an idle connection open, sends garbage, speaks version 2, claims to be a
  // rank of another group, then lets the genuine rank 1 start. The group forms regardless.
  LoopbackCluster cluster(2);
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  auto outcomes = test::run_ranks(3, [&](int process) {
    if (process == 2) {
      for (int fd : cluster.fds) ::close(fd);
      int idle = dial(cluster.endpoints[0]);

      int garbage = dial(cluster.endpoints[0]);
      std::vector<uint8_t> noise(4096);
      for (size_t i = 0; i < noise.size(); ++i) noise[i] = uint8_t(i * 37 + 11);
      write_exactly(garbage, noise.data(), 64);
      EXPECT_TRUE(closed_by_peer(garbage));
      ::close(garbage);

      int future = dial(cluster.endpoints[0]);
      tcp::ClientHello hello;
      hello.version = kTcpProtocolVersion + 1;
      uint8_t bytes[tcp::kHelloBytes];
      tcp::encode(hello, bytes);
      write_exactly(future, bytes, sizeof bytes);
      uint8_t reply[tcp::kHelloBytes];
      EXPECT_TRUE(read_exactly(future, reply, sizeof reply));
      EXPECT_EQ(tcp::decode_server_hello(reply).version, kTcpProtocolVersion);
      EXPECT_EQ(tcp::decode_server_hello(reply).status, tcp::HandshakeStatus::version_mismatch);
      ::close(future);

      // Right secret, but a group of three: another group id.
      auto options = cluster.options(0, GetParam());
      options.endpoints.push_back("127.0.0.1:1");
      options.rank = 2;
      int port;
      options.listen_fd = tcp_listen("127.0.0.1", 0, &port);
      options.timeout = 700ms;
      options.topology = TcpTopology::Mesh;
      std::string what = error_of([&] { make_tcp_group(options); });
      EXPECT_NE(what.find(fmt::format("could not connect to rank 0 at {} within 0.7 s: it belongs to another group "
                                      "(its endpoint list or topology differs)",
                                      cluster.endpoints[0])),
                std::string::npos)
          << what;
      ::close(options.listen_fd);

      ASSERT_EQ(::write(go[1], "g", 1), 1);
      std::this_thread::sleep_for(300ms);
      ::close(idle);
      return;
    }
    if (process == 1) {
      char c;
      ASSERT_EQ(::read(go[0], &c, 1), 1);
    }
    auto g = make_tcp_group(cluster.options(process, GetParam()));
    std::vector<float> v(1000, float(process + 1));
    g->all_reduce_sum(v.data(), v.size());
    EXPECT_EQ(v[999], 3.0f);
    g->barrier();
  });
  ::close(go[0]);
  ::close(go[1]);
  EXPECT_RANKS_PASS(outcomes);
}

}  // namespace
}  // namespace shardlm::comm
