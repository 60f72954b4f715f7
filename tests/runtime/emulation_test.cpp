// Link emulation: namespaces joined by shaped veth pairs. A transfer over the emulated link is
// slower than over the plain one by about the configured factor, the delay shows in round
// trips, and the namespaces are gone afterwards, even when the process that made them is killed.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "comm/connect.h"
#include "core/process_stats.h"
#include "multiprocess.h"
#include "runtime/emulated_network.h"
#include "test_paths.h"

using namespace shardlm;

namespace {

std::string namespaces_of(pid_t pid) {
  std::string out;
  test::run_command("ip netns list | grep slmemu" + std::to_string(pid % 100000) + " || true", &out);
  return out;
}

// Seconds rank 0 takes to send `bytes` to rank 1 and get one byte back, median of `reps`.
double transfer_seconds(const EmulatedNetwork& net, size_t bytes, int reps) {
  double result = 0;
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return -1;
  auto outcomes = test::run_ranks(2, [&](int rank) {
    EnterNetns inside(net.netns(rank));
    comm::GroupSpec spec;
    spec.backend = "tcp";
    spec.topology = "mesh";
    spec.rank = rank;
    spec.size = 2;
    spec.secret = "emulation";
    spec.timeout = std::chrono::seconds(30);
    spec.endpoints = {net.address(0) + ":7701", net.address(1) + ":7701"};
    auto g = comm::connect(spec);
    std::vector<uint8_t> data(bytes, 7);
    uint8_t ack = 0;
    std::vector<double> times;
    for (int i = 0; i < reps + 1; ++i) {
      Stopwatch clock;
      if (rank == 0) {
        g->send(1, data.data(), bytes);
        g->recv(1, &ack, 1);
      } else {
        g->recv(0, data.data(), bytes);
        g->send(0, &ack, 1);
      }
      if (i > 0) times.push_back(clock.seconds());
    }
    std::sort(times.begin(), times.end());
    if (rank == 0) {
      double m = times[times.size() / 2];
      if (::write(pipe_fds[1], &m, sizeof m) != sizeof m) throw std::runtime_error("pipe");
    }
  });
  std::string report;
  EXPECT_TRUE(test::all_passed(outcomes, &report)) << report;
  if (::read(pipe_fds[0], &result, sizeof result) != sizeof result) result = -1;
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
  return result;
}

}  // namespace

TEST(Emulation, LinkSpecsParse) {
  EXPECT_DOUBLE_EQ(parse_link("10gbe").bits_per_s, 10e9);
  EXPECT_DOUBLE_EQ(parse_link("tb5").bits_per_s, 80e9);
  LinkSpec l = parse_link("bw=250mbit,delay=2ms");
  EXPECT_DOUBLE_EQ(l.bits_per_s, 250e6);
  EXPECT_DOUBLE_EQ(l.delay_s, 2e-3);
  EXPECT_THROW(parse_link("bw=10parsecs"), Error);
  EXPECT_THROW(parse_link("fast"), Error);
}

TEST(Emulation, ShapedLinkIsSlowerByTheConfiguredFactorAndNamespacesAreRemoved) {
  std::string why;
  if (!EmulatedNetwork::available(&why)) GTEST_SKIP() << why;
  const size_t bytes = size_t(4) << 20;
  double plain = 0, shaped = 0, rtt = 0;
  {
    EmulatedNetwork net(2, LinkSpec{});
    plain = transfer_seconds(net, bytes, 3);
  }
  {
    EmulatedNetwork net(2, parse_link("bw=200mbit"));
    shaped = transfer_seconds(net, bytes, 3);
  }
  bool delay = false;
  {
    EmulatedNetwork net(2, parse_link("delay=5ms"));
    delay = net.delay_emulated();
    rtt = transfer_seconds(net, 1, 5);
  }
  const double expected = double(bytes) * 8 / 200e6;  // 0.168 s at 200 Mbit/s
  std::printf("4 MiB: plain %.4f s, at 200 Mbit/s %.4f s (expected %.4f); 1 byte round trip at 5 ms delay %.4f s\n", plain,
              shaped, expected, rtt);
  EXPECT_GT(shaped, 0.8 * expected);
  EXPECT_LT(shaped, 1.5 * expected);
  EXPECT_GT(shaped / plain, 5.0);
  if (delay) {
    EXPECT_GT(rtt, 0.009);  // two one-way delays of 5 ms
    EXPECT_LT(rtt, 0.05);
  } else {
    std::printf("this kernel has no netem: delay is not emulated here (bandwidth is)\n");
    EXPECT_LT(rtt, 0.009);
  }
  EXPECT_EQ(namespaces_of(::getpid()), "");
}

TEST(Emulation, NamespacesGoEvenWhenTheProcessIsKilled) {
  std::string why;
  if (!EmulatedNetwork::available(&why)) GTEST_SKIP() << why;
  pid_t pid = ::fork();
  if (pid == 0) {
    EmulatedNetwork net(3, parse_link("10gbe"));
    ::pause();  // killed here
    ::_exit(0);
  }
  for (int i = 0; i < 100 && namespaces_of(pid).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_NE(namespaces_of(pid), "") << "the network was never made";
  ::kill(pid, SIGKILL);
  int status;
  ::waitpid(pid, &status, 0);
  for (int i = 0; i < 100 && !namespaces_of(pid).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(namespaces_of(pid), "");
}
