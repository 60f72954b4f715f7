// Lifetimes of tcp groups and their ranks: a rank killed mid-collective is named by every other
// rank within 2 s (also by ranks that have no connection to it), a rank that leaves normally
// breaks nothing, and creating and destroying groups leaks no fd and no thread.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "comm/tcp/tcp_group.h"
#include "multiprocess.h"
#include "tcp_test_util.h"

namespace shardlm::comm {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using test::LoopbackCluster;

// Far above the 2 s detection bound below (a timeout cannot pass for detection), and short of the
// 30 s that run_ranks gives the killed-rank test.
constexpr std::chrono::milliseconds kGroupTimeout = 10s;

int count_entries(const char* dir) {
  DIR* d = ::opendir(dir);
  if (!d) return -1;
  int n = 0;
  while (auto* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n;
}

int64_t now_ns() { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count(); }

class TcpLifecycleTest : public ::testing::TestWithParam<TcpTopology> {};
INSTANTIATE_TEST_SUITE_P(Topologies, TcpLifecycleTest, ::testing::Values(TcpTopology::Ring, TcpTopology::Mesh),
                         test::topology_name);

TEST_P(TcpLifecycleTest, KilledRankIsNamedByEveryRankWithinTwoSeconds) {
  // Rank 2 of 4 is SIGKILLed from a thread while all ranks loop over all-reduces of 16 KB and
  // 1 MB. In the ring, rank 0 has no connection to rank 2 and must learn it from its neighbours.
  // The group timeout is 10 s, so only failure detection (not a timeout) can pass the 2 s bound.
  const int n = 4, victim = 2;
  LoopbackCluster cluster(n, kGroupTimeout);
  auto* killed_at = static_cast<std::atomic<int64_t>*>(
      ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(killed_at, MAP_FAILED);
  killed_at->store(0);
  auto outcomes = test::run_ranks(n, [&](int rank) {
    auto g = make_tcp_group(cluster.options(rank, GetParam()));
    g->barrier();
    if (rank == victim) {
      std::thread([killed_at] {
        std::this_thread::sleep_for(150ms);
        killed_at->store(now_ns());
        ::kill(::getpid(), SIGKILL);
      }).detach();
    }
    std::vector<float> data(256 << 10, 1.0f);
    try {
      for (int i = 0; i < 100000; ++i) g->all_reduce_sum(data.data(), i % 2 ? data.size() : 4096);
      ADD_FAILURE() << "the all-reduces went on without rank " << victim;
    } catch (const CommError& e) {
      double latency = double(now_ns() - killed_at->load()) / 1e9;
      std::string what = e.what();
      std::printf("rank %d after %.3f s: %s\n", rank, latency, what.c_str());
      EXPECT_NE(what.find(fmt::format("rank {} ({})", victim, cluster.endpoints[victim])), std::string::npos) << what;
      EXPECT_GT(killed_at->load(), 0);
      EXPECT_LT(latency, 2.0) << what;
    }
  }, 30);
  ::munmap(killed_at, 4096);
  for (const auto& o : outcomes) {
    std::printf("%s", o.output.c_str());  // each surviving rank's detection latency and message
    if (o.rank == victim) {
      EXPECT_EQ(o.exit_code, 128 + SIGKILL) << o.output;
    } else {
      EXPECT_EQ(o.exit_code, 0) << "rank " << o.rank << ":\n" << o.output;
      EXPECT_FALSE(o.timed_out);
    }
  }
}

TEST_P(TcpLifecycleTest, RankThatLeavesNormallyBreaksNothing) {
  // Rank 2 sends rank 0 one message and destroys its group at once. Ranks 0 and 1 go on talking
  // (their waits see rank 2's connections close, with a goodbye), then rank 0 still receives the
  // message rank 2 left behind; only asking rank 2 for more is an error.
  LoopbackCluster cluster(3, kGroupTimeout);
  auto outcomes = test::run_ranks(3, [&](int rank) {
    auto g = make_tcp_group(cluster.options(rank, GetParam()));
    if (rank == 2) {
      uint32_t farewell = 0xfa4e;
      g->send(0, &farewell, 4);
      return;
    }
    std::vector<uint8_t> buf(1 << 20);
    for (int i = 0; i < 20; ++i) {
      if (rank == 0) g->send_recv(1, buf.data(), buf.size(), 1, buf.data(), buf.size());
      if (rank == 1) g->send_recv(0, buf.data(), buf.size(), 0, buf.data(), buf.size());
      std::this_thread::sleep_for(5ms);
    }
    if (rank == 0) {
      uint32_t farewell = 0;
      g->recv(2, &farewell, 4);
      EXPECT_EQ(farewell, 0xfa4eu);
      try {
        g->recv(2, &farewell, 4);
        ADD_FAILURE() << "received from a rank that left";
      } catch (const CommError& e) {
        EXPECT_EQ(std::string(e.what()),
                  fmt::format("rank 2 ({}) left the group while this rank expected 4 bytes from it", cluster.endpoints[2]));
      }
    }
  });
  EXPECT_RANKS_PASS(outcomes);
}

TEST(TcpLifecycle, CreateAndDestroyLeavesNoFdOrThread) {
  // 200 groups of 2 ranks on the same listening sockets (alternating topologies, so that one rank
  // often forms the next group while the other still tears down the last), then 40 groups of 4
  // ring ranks with traffic between non-neighbours, then 40 groups that bind their own port.
  LoopbackCluster pair(2, kGroupTimeout), quad(4, kGroupTimeout);
  std::vector<std::string> own_endpoints;
  for (int r = 0; r < 2; ++r) {
    int port;
    ::close(tcp_listen("127.0.0.1", 0, &port));
    own_endpoints.push_back(fmt::format("127.0.0.1:{}", port));
  }
  auto cycle = [](Group& g) {
    std::vector<float> v(64, 1.0f);
    g.all_reduce_sum(v.data(), v.size());
    EXPECT_EQ(v[63], float(g.size()));
  };
  auto start = Clock::now();
  auto outcomes = test::run_ranks(4, [&](int rank) {
    int fds_before = count_entries("/proc/self/fd"), threads_before = count_entries("/proc/self/task");
    if (rank < 2) {
      for (int i = 0; i < 200; ++i) {
        auto g = make_tcp_group(pair.options(rank, i % 2 ? TcpTopology::Mesh : TcpTopology::Ring));
        cycle(*g);
      }
    }
    for (int i = 0; i < 40; ++i) {
      auto g = make_tcp_group(quad.options(rank, TcpTopology::Ring));
      int partner = rank ^ 2, value = rank, got = -1;
      g->send_recv(partner, &value, 4, partner, &got, 4);  // a connection opened on demand
      EXPECT_EQ(got, partner);
      cycle(*g);
    }
    if (rank < 2) {
      for (int i = 0; i < 40; ++i) {
        TcpGroupOptions o = pair.options(rank, TcpTopology::Mesh);
        o.endpoints = own_endpoints;
        o.listen_fd = -1;  // the group binds (and must close) its own listening socket
        auto g = make_tcp_group(o);
        cycle(*g);
      }
    }
    EXPECT_EQ(count_entries("/proc/self/fd"), fds_before) << "fds leaked";
    EXPECT_EQ(count_entries("/proc/self/task"), threads_before) << "threads leaked";
  }, 60);
  EXPECT_RANKS_PASS(outcomes);
  std::printf("280 group lifetimes per rank took %.2f s\n", std::chrono::duration<double>(Clock::now() - start).count());
}

}  // namespace
}  // namespace shardlm::comm
