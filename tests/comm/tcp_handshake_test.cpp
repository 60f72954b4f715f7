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
#include "tcp_test_util.h"

namespace shardlm::comm {
namespace {

using namespace std::chrono_literals;

using test::LoopbackCluster;

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
  EXPECT_NE(what.find(fmt::format("could not connect to rank 1 at {}", cluster.endpoints[1])), std::string::npos)
      << what;
  EXPECT_NE(what.find("refused 2 connection(s)"), std::string::npos) << what;
  EXPECT_NE(what.find("not a shardlm tcp handshake"), std::string::npos) << what;
  EXPECT_NE(what.find("speaks shardlm tcp protocol version 2, this process speaks 1"), std::string::npos) << what;
}

// A scripted rank 1 of a 2-rank ring that knows the secret: it completes both handshakes and the
// group's session exchange, then sends rank 0 whatever frame the test gives it.
class ScriptedRank1 {
 public:
  ScriptedRank1(const LoopbackCluster& cluster, std::string frame) {
    thread_ = std::thread([this, &cluster, frame = std::move(frame)] { play(cluster, frame); });
  }
  ~ScriptedRank1() { thread_.join(); }

 private:
  void play(const LoopbackCluster& cluster, const std::string& frame) {
    const std::string& secret = cluster.options(0).secret;
    // Rank 0's connection to us.
    int in = ::accept(cluster.fds[1], nullptr, nullptr);
    uint8_t hello[tcp::kHelloBytes], reply[tcp::kHelloBytes], auth[tcp::kAuthBytes], verdict[tcp::kVerdictBytes];
    ASSERT_TRUE(read_exactly(in, hello, sizeof hello));
    tcp::ClientHello h = tcp::decode_client_hello(hello);
    tcp::ServerHello answer;
    answer.version = kTcpProtocolVersion;
    answer.rank = 1;
    answer.group_id = h.group_id;
    answer.nonce.fill(7);
    tcp::encode(answer, reply);
    write_exactly(in, reply, sizeof reply);
    ASSERT_TRUE(read_exactly(in, auth, sizeof auth));
    tcp::encode_verdict(tcp::HandshakeStatus::ok, tcp::accept_mac(secret, hello, reply), verdict);
    write_exactly(in, verdict, sizeof verdict);
    // Our connection to rank 0.
    int out = dial(cluster.endpoints[0]);
    tcp::ClientHello mine = h;
    mine.from_rank = 1;
    mine.to_rank = 0;
    tcp::encode(mine, hello);
    write_exactly(out, hello, sizeof hello);
    ASSERT_TRUE(read_exactly(out, reply, sizeof reply));
    tcp::Digest mac = tcp::connect_mac(secret, reply + 32, hello);
    write_exactly(out, mac.data(), mac.size());
    ASSERT_TRUE(read_exactly(out, verdict, sizeof verdict));
    ASSERT_EQ(tcp::verdict_status(verdict), tcp::HandshakeStatus::ok);
    // The session id exchange: 8 bytes each way, frame #0.
    uint8_t frame_in[tcp::kFrameHeaderBytes + 8], frame_out[tcp::kFrameHeaderBytes + 8] = {};
    ASSERT_TRUE(read_exactly(in, frame_in, sizeof frame_in));
    tcp::encode(tcp::FrameHeader{tcp::kDataMagic, 0, 8}, frame_out);
    write_exactly(out, frame_out, sizeof frame_out);
    write_exactly(out, frame.data(), frame.size());
    char c;
    read_exactly(in, &c, 1);  // until rank 0 gives up
    ::close(in);
    ::close(out);
  }
  std::thread thread_;
};

std::string frame_bytes(uint32_t magic, uint32_t seq, uint64_t length) {
  std::string f(tcp::kFrameHeaderBytes, '\0');
  tcp::encode(tcp::FrameHeader{magic, seq, length}, reinterpret_cast<uint8_t*>(f.data()));
  return f + "abcd";
}

TEST(TcpFraming, BadFramesAreErrorsNamingThePeer) {
  struct Case {
    std::string frame, error;
  };
  const std::vector<Case> cases = {
      // An absurd length is compared with the recv's size, never allocated.
      {frame_bytes(tcp::kDataMagic, 1, uint64_t(1) << 60),
       "sent a message of 1152921504606846976 bytes where this rank expected 4 (do the ranks call in the same order?)"},
      {frame_bytes(tcp::kDataMagic, 5, 4), "sent message #5 where #1 was due: the stream is corrupted"},
      {frame_bytes(0x12345678, 1, 4), "sent a corrupted message header (magic 0x12345678, length 4)"},
      {frame_bytes(tcp::kAbortMagic, 1, uint64_t(1) << 40), "sent a corrupted message header (magic 0x414d4c53"},
      {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "sent a corrupted message header (magic 0x20544547"},
  };
  for (const auto& c : cases) {
    LoopbackCluster cluster(2);
    auto options = cluster.options(0);
    options.timeout = 3s;
    ScriptedRank1 rank1(cluster, c.frame);
    auto g = make_tcp_group(options);
    uint32_t x = 0;
    std::string what = error_of([&] { g->recv(1, &x, 4); });
    EXPECT_NE(what.find(fmt::format("rank 1 ({}) {}", cluster.endpoints[1], c.error)), std::string::npos) << what;
    // The group is unusable afterwards, with the same reason.
    EXPECT_EQ(error_of([&] { g->barrier(); }), what);
  }
}

// Processes 0 and 1 of a stranger test, the genuine ranks: rank 1 starts only once the stranger
// (process 2) has written to `go_fd`; then the pair must form its group and sum correctly.
void play_genuine_rank(const LoopbackCluster& cluster, int process, TcpTopology topology, int go_fd) {
  if (process == 1) {
    char c;
    ASSERT_EQ(::read(go_fd, &c, 1), 1);
  }
  auto g = make_tcp_group(cluster.options(process, topology));
  std::vector<float> v(1000, float(process + 1));
  g->all_reduce_sum(v.data(), v.size());
  EXPECT_EQ(v[999], 3.0f);
  g->barrier();
}

class TcpStrangerTest : public ::testing::TestWithParam<TcpTopology> {};
INSTANTIATE_TEST_SUITE_P(Topologies, TcpStrangerTest, ::testing::Values(TcpTopology::Ring, TcpTopology::Mesh),
                         test::topology_name);

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
    play_genuine_rank(cluster, process, GetParam(), go[0]);
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
    play_genuine_rank(cluster, process, GetParam(), go[0]);
  });
  ::close(go[0]);
  ::close(go[1]);
  EXPECT_RANKS_PASS(outcomes);
}

}  // namespace
}  // namespace shardlm::comm
