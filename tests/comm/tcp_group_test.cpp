// The tcp backend's data path, for both topologies, with every rank a separate process on
// 127.0.0.1: point-to-point of any size, simultaneous exchanges, collectives (values and
// bit-identity across ranks), sub-groups, connections to non-neighbours, stats, and the
// single-rank group.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "comm/tcp/sha256.h"
#include "comm/tcp/tcp_group.h"
#include "core/dtype.h"
#include "multiprocess.h"
#include "tcp_test_util.h"

namespace shardlm::comm {
namespace {

using test::LoopbackCluster;

std::vector<uint8_t> pattern(size_t bytes, uint32_t seed) {
  std::vector<uint8_t> v(bytes);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x = x * 1664525u + 1013904223u;
    b = uint8_t(x >> 24);
  }
  return v;
}

std::vector<float> random_floats(size_t count, int rank, int salt) {
  std::mt19937 gen(uint32_t(rank * 7919 + salt));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (auto& x : v) x = dist(gen) * float(1 + rank);  // different magnitudes: the order of additions shows
  return v;
}

tcp::Digest digest_of(const void* data, size_t bytes) { return tcp::sha256(data, bytes); }

// Every rank holds the same bytes: all-gather their digests and compare.
void expect_same_on_every_rank(Group& g, const void* data, size_t bytes, const std::string& what) {
  tcp::Digest mine = digest_of(data, bytes);
  std::vector<tcp::Digest> all(size_t(g.size()));
  g.all_gather(mine.data(), sizeof(tcp::Digest), all.data());
  for (int r = 0; r < g.size(); ++r) EXPECT_EQ(all[size_t(r)], mine) << what << ": rank " << r << " differs";
}

class TcpGroupTest : public ::testing::TestWithParam<TcpTopology> {};

INSTANTIATE_TEST_SUITE_P(Topologies, TcpGroupTest, ::testing::Values(TcpTopology::Ring, TcpTopology::Mesh),
                         test::topology_name);

TEST_P(TcpGroupTest, PointToPointOfAnySize) {
  LoopbackCluster cluster(2);
  // 24 MB is several times the socket buffers: the sender must block and resume.
  const std::vector<size_t> sizes = {0, 1, 4093, 1 << 20, 24 << 20};
  auto outcomes = test::run_ranks(2, [&](int rank) {
    auto g = make_tcp_group(cluster.options(rank, GetParam()));
    EXPECT_EQ(g->rank(), rank);
    EXPECT_EQ(g->size(), 2);
    EXPECT_EQ(g->backend(), GetParam() == TcpTopology::Ring ? "tcp-ring" : "tcp-mesh");
    uint64_t payload = 0;
    for (size_t bytes : sizes) {
      payload += bytes;
      auto expected = pattern(bytes, uint32_t(bytes));
      if (rank == 0) {
        g->send(1, expected.data(), bytes);
        std::vector<uint8_t> back(bytes);
        g->recv(1, back.data(), bytes);
        for (auto& b : expected) b ^= 0x5a;
        EXPECT_TRUE(back == expected) << bytes << " bytes came back altered";
      } else {
        std::vector<uint8_t> got(bytes, 0xee);
        g->recv(0, got.data(), bytes);
        EXPECT_TRUE(got == expected) << bytes << " bytes arrived altered";
        for (auto& b : got) b ^= 0x5a;
        g->send(0, got.data(), bytes);
      }
    }
    CommStats s = g->stats();
    EXPECT_EQ(s.bytes_sent, payload);
    EXPECT_EQ(s.bytes_received, payload);
    EXPECT_EQ(s.messages_sent, sizes.size());
    EXPECT_GT(s.seconds, 0.0);
    g->reset_stats();
    EXPECT_EQ(g->stats().bytes_sent, 0u);
  });
  EXPECT_RANKS_PASS(outcomes);
}

TEST_P(TcpGroupTest, SendRecvMovesBothWaysAtOnce) {
  // Every rank sends a buffer far larger than the socket buffers to its right while receiving
  // from its left: only progress in both directions at once avoids a deadlock.
  for (int n : {2, 3}) {
    LoopbackCluster cluster(n);
    auto bytes_from = [](int r) { return size_t(10 << 20) + size_t(r) * 12345; };
    auto outcomes = test::run_ranks(n, [&](int rank) {
      auto g = make_tcp_group(cluster.options(rank, GetParam()));
      int right = (rank + 1) % n, left = (rank + n - 1) % n;
      auto mine = pattern(bytes_from(rank), uint32_t(rank));
      std::vector<uint8_t> got(bytes_from(left));
      g->send_recv(right, mine.data(), mine.size(), left, got.data(), got.size());
      EXPECT_TRUE(got == pattern(bytes_from(left), uint32_t(left))) << "from rank " << left;
      // Zero bytes one way, some the other.
      uint32_t token = 1000 + uint32_t(rank), incoming = 0;
      g->send_recv(right, &token, rank % 2 ? 0 : 4, left, &incoming, left % 2 ? 0 : 4);
      if (left % 2 == 0) {
        EXPECT_EQ(incoming, 1000u + uint32_t(left));
      }
    });
    EXPECT_RANKS_PASS(outcomes);
  }
}

TEST_P(TcpGroupTest, AllReduceF32IsCorrectAndBitIdentical) {
  // 16 KB goes direct in Mesh; 1.2 MB goes round the ring in both topologies; counts below the
  // rank count leave some ring chunks empty.
  const std::vector<size_t> counts = {1, 2, 7, 4096, 300001};
  for (int n : {2, 3, 4}) {
    LoopbackCluster cluster(n);
    auto outcomes = test::run_ranks(n, [&](int rank) {
      auto g = make_tcp_group(cluster.options(rank, GetParam()));
      for (size_t count : counts) {
        auto data = random_floats(count, rank, int(count));
        g->all_reduce_sum(data.data(), count);
        std::vector<std::vector<float>> inputs;
        for (int r = 0; r < n; ++r) inputs.push_back(random_floats(count, r, int(count)));
        size_t far = 0;
        for (size_t i = 0; i < count; ++i) {
          double exact = 0;
          for (int r = 0; r < n; ++r) exact += inputs[size_t(r)][i];
          if (std::fabs(data[i] - exact) > 1e-5 * n) ++far;
        }
        EXPECT_EQ(far, 0u) << count << " floats over " << n << " ranks";
        if (GetParam() == TcpTopology::Mesh && count * 4 * size_t(n - 1) <= kTcpMeshDirectMaxBytes) {
          // Direct reduction: exactly the sum taken in rank order.
          size_t differ = 0;
          for (size_t i = 0; i < count; ++i) {
            float sum = inputs[0][i];
            for (int r = 1; r < n; ++r) sum += inputs[size_t(r)][i];
            differ += std::memcmp(&sum, &data[i], 4) != 0;
          }
          EXPECT_EQ(differ, 0u) << "direct all-reduce of " << count << " floats is not the rank-order sum";
        }
        expect_same_on_every_rank(*g, data.data(), count * 4, fmt::format("f32 all_reduce of {}", count));
      }
    });
    EXPECT_RANKS_PASS(outcomes);
  }
}

TEST_P(TcpGroupTest, AllReduceBf16SumsInF32AndRoundsOnce) {
  const std::vector<size_t> counts = {3, 8192, 200003};
  for (int n : {2, 3, 4}) {
    LoopbackCluster cluster(n);
    auto outcomes = test::run_ranks(n, [&](int rank) {
      auto g = make_tcp_group(cluster.options(rank, GetParam()));
      for (size_t count : counts) {
        auto bf16_of = [&](int r) {
          auto f = random_floats(count, r, int(count) + 1);
          std::vector<uint16_t> h(count);
          for (size_t i = 0; i < count; ++i) h[i] = f32_to_bf16(f[i]);
          return h;
        };
        auto data = bf16_of(rank);
        g->all_reduce_sum_bf16(data.data(), count);
        std::vector<std::vector<uint16_t>> inputs;
        for (int r = 0; r < n; ++r) inputs.push_back(bf16_of(r));
        size_t far = 0;
        for (size_t i = 0; i < count; ++i) {
          double exact = 0;
          for (int r = 0; r < n; ++r) exact += bf16_to_f32(inputs[size_t(r)][i]);
          // One rounding to bf16 at the end: within half a bf16 ulp (2^-8 relative) plus f32 noise.
          if (std::fabs(bf16_to_f32(data[i]) - exact) > std::fabs(exact) / 256 + 1e-5) ++far;
        }
        EXPECT_EQ(far, 0u) << count << " bf16 over " << n << " ranks";
        if (GetParam() == TcpTopology::Mesh && count * 2 * size_t(n - 1) <= kTcpMeshDirectMaxBytes) {
          size_t differ = 0;
          for (size_t i = 0; i < count; ++i) {
            float sum = bf16_to_f32(inputs[0][i]);
            for (int r = 1; r < n; ++r) sum += bf16_to_f32(inputs[size_t(r)][i]);
            differ += f32_to_bf16(sum) != data[i];
          }
          EXPECT_EQ(differ, 0u) << "direct bf16 all-reduce of " << count << " is not the rounded rank-order f32 sum";
        }
        expect_same_on_every_rank(*g, data.data(), count * 2, fmt::format("bf16 all_reduce of {}", count));
      }
    });
    EXPECT_RANKS_PASS(outcomes);
  }
}

TEST_P(TcpGroupTest, AllGatherAndBarrier) {
  for (int n : {3, 4}) {
    LoopbackCluster cluster(n);
    // Arrival time of each rank at the barrier, in memory shared by the forked ranks.
    auto* arrivals = static_cast<std::atomic<int64_t>*>(
        ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(arrivals, MAP_FAILED);
    auto outcomes = test::run_ranks(n, [&](int rank) {
      auto g = make_tcp_group(cluster.options(rank, GetParam()));
      for (size_t bytes : {size_t(0), size_t(5), size_t(100000)}) {
        auto mine = pattern(bytes, uint32_t(rank * 100 + bytes));
        std::vector<uint8_t> all(bytes * size_t(n), 0xee);
        g->all_gather(mine.data(), bytes, all.data());
        for (int r = 0; r < n; ++r)
          EXPECT_TRUE(std::equal(all.begin() + long(bytes) * r, all.begin() + long(bytes) * (r + 1),
                                 pattern(bytes, uint32_t(r * 100 + bytes)).begin()))
              << "block of rank " << r << ", " << bytes << " bytes each";
      }
      // In place: `mine` already sits at this rank's block.
      std::vector<int32_t> ids(size_t(n), -1);
      ids[size_t(rank)] = rank * 11;
      g->all_gather(&ids[size_t(rank)], 4, ids.data());
      for (int r = 0; r < n; ++r) EXPECT_EQ(ids[size_t(r)], r * 11);

      for (int round = 0; round < 3; ++round) {
        std::this_thread::sleep_for(std::chrono::milliseconds(((rank + round) % n) * 40));
        arrivals[rank].store(std::chrono::steady_clock::now().time_since_epoch().count());
        g->barrier();
        int64_t left = std::chrono::steady_clock::now().time_since_epoch().count();
        for (int r = 0; r < n; ++r)
          EXPECT_GE(left, arrivals[r].load()) << "left the barrier before rank " << r << " reached it";
        g->barrier();  // nobody overwrites an arrival before everyone has checked it
      }
    });
    ::munmap(arrivals, 4096);
    EXPECT_RANKS_PASS(outcomes);
  }
}

TEST_P(TcpGroupTest, SplitIntoSubGroups) {
  // Colors 0/1 by parity: in a ring of 4 the members {0, 2} and {1, 3} are not neighbours.
  LoopbackCluster cluster(4);
  auto outcomes = test::run_ranks(4, [&](int rank) {
    auto g = make_tcp_group(cluster.options(rank, GetParam()));
    auto sub = g->split(rank % 2, -rank);  // key -rank: the higher parent rank comes first
    ASSERT_EQ(sub->size(), 2);
    EXPECT_EQ(sub->rank(), rank >= 2 ? 0 : 1);
    EXPECT_EQ(sub->backend(), g->backend());
    int partner = rank ^ 2;

    std::vector<float> v(3000, float(rank + 1));
    sub->all_reduce_sum(v.data(), v.size());
    for (float x : v) ASSERT_EQ(x, float(rank + 1 + partner + 1));

    int32_t mine = rank * 10, both[2] = {-1, -1};
    sub->all_gather(&mine, 4, both);
    EXPECT_EQ(both[sub->rank()], rank * 10);
    EXPECT_EQ(both[1 - sub->rank()], partner * 10);
    sub->barrier();

    uint64_t token = 0xabc0 + uint64_t(rank);
    if (sub->rank() == 0) {
      sub->send(1, &token, 8);
    } else {
      uint64_t got = 0;
      sub->recv(0, &got, 8);
      EXPECT_EQ(got, 0xabc0 + uint64_t(partner));
    }
    // The parent still works after (and between) sub-group traffic, and a split of a split too.
    std::vector<float> w(5, 1.0f);
    g->all_reduce_sum(w.data(), w.size());
    EXPECT_EQ(w[4], 4.0f);
    auto alone = sub->split(sub->rank(), 0);
    EXPECT_EQ(alone->size(), 1);
    float x = 2.5f;
    alone->all_reduce_sum(&x, 1);
    EXPECT_EQ(x, 2.5f);
  });
  EXPECT_RANKS_PASS(outcomes);
}

TEST_P(TcpGroupTest, ReachesNonNeighbours) {
  // Pipeline traffic in a group of 5: activations hop 0 -> 2 -> 4 (never ring neighbours), the
  // last stage returns a 4-byte token to the first, and everyone greets everyone.
  const int n = 5;
  LoopbackCluster cluster(n);
  auto outcomes = test::run_ranks(n, [&](int rank) {
    auto g = make_tcp_group(cluster.options(rank, GetParam()));
    const size_t activation_bytes = 3 << 20;
    for (int step = 0; step < 3; ++step) {
      if (rank == 0) {
        auto act = pattern(activation_bytes, uint32_t(step));
        g->send(2, act.data(), act.size());
        uint32_t token = 0;
        g->recv(4, &token, 4);
        EXPECT_EQ(token, 777u + uint32_t(step));
      } else if (rank == 2) {
        std::vector<uint8_t> act(activation_bytes);
        g->recv(0, act.data(), act.size());
        EXPECT_TRUE(act == pattern(activation_bytes, uint32_t(step)));
        for (auto& b : act) b += 1;
        g->send(4, act.data(), act.size());
      } else if (rank == 4) {
        std::vector<uint8_t> act(activation_bytes);
        g->recv(2, act.data(), act.size());
        auto expected = pattern(activation_bytes, uint32_t(step));
        for (auto& b : expected) b += 1;
        EXPECT_TRUE(act == expected);
        uint32_t token = 777u + uint32_t(step);
        g->send(0, &token, 4);
      }
    }
    // Small sends fit in the socket buffers, so all sends first, then all receives, is fine.
    for (int p = 0; p < n; ++p)
      if (p != rank) {
        int32_t hello = rank * 100 + p;
        g->send(p, &hello, 4);
      }
    for (int p = 0; p < n; ++p)
      if (p != rank) {
        int32_t hello = -1;
        g->recv(p, &hello, 4);
        EXPECT_EQ(hello, p * 100 + rank);
      }
    std::vector<float> v(100, 1.0f);
    g->all_reduce_sum(v.data(), v.size());
    EXPECT_EQ(v[99], float(n));
  });
  EXPECT_RANKS_PASS(outcomes);
}

TEST_P(TcpGroupTest, WrongMessageSizeNamesThePeerAndBreaksTheGroupEverywhere) {
  LoopbackCluster cluster(3);
  auto outcomes = test::run_ranks(3, [&](int rank) {
    auto g = make_tcp_group(cluster.options(rank, GetParam()));
    g->barrier();  // every rank has formed its group before rank 1 breaks it
    uint8_t buf[12] = {};
    if (rank == 0) g->send(1, buf, 10);
    if (rank == 1) {  // NOLINT
      try {
        g->recv(0, buf, 12);
        ADD_FAILURE() << "a 10-byte message was accepted by a 12-byte recv";
      } catch (const CommError& e) {
        std::string what = e.what();
        EXPECT_NE(what.find("rank 0 (127.0.0.1:"), std::string::npos) << what;
        EXPECT_NE(what.find("10 bytes where this rank expected 12"), std::string::npos) << what;
      }
    }
    // Every rank's next call fails with the reason, the others learning it from rank 1.
    try {
      g->barrier();
      ADD_FAILURE() << "barrier after a protocol error succeeded";
    } catch (const CommError& e) {
      std::string what = e.what();
      EXPECT_NE(what.find("10 bytes where this rank expected 12"), std::string::npos) << what;
      if (rank != 1) {
        EXPECT_NE(what.find("reported by rank"), std::string::npos) << what;
      }
    }
  });
  EXPECT_RANKS_PASS(outcomes);
}

TEST_P(TcpGroupTest, SilentPeerTimesOutNamingIt) {
  LoopbackCluster cluster(2);
  auto outcomes = test::run_ranks(2, [&](int rank) {
    auto options = cluster.options(rank, GetParam());
    options.timeout = std::chrono::milliseconds(400);
    auto g = make_tcp_group(options);
    if (rank == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(900));  // alive, connected, silent
      return;
    }
    auto start = std::chrono::steady_clock::now();
    uint32_t x = 0;
    try {
      g->recv(1, &x, 4);
      ADD_FAILURE() << "recv from a silent rank returned";
    } catch (const CommError& e) {
      std::string what = e.what();
      EXPECT_NE(what.find("timed out after 0.4 s waiting for rank 1 (127.0.0.1:"), std::string::npos) << what;
    }
    double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_GE(waited, 0.39);
    EXPECT_LT(waited, 1.2);
  });
  EXPECT_RANKS_PASS(outcomes);
}

TEST(TcpGroup, SingleRankGroup) {
  LoopbackCluster cluster(1);
  auto g = make_tcp_group(cluster.options(0, TcpTopology::Mesh));
  float v[3] = {1, 2, 3};
  g->all_reduce_sum(v, 3);
  EXPECT_EQ(v[2], 3.0f);
  uint16_t h = f32_to_bf16(1.5f);
  g->all_reduce_sum_bf16(&h, 1);
  EXPECT_EQ(bf16_to_f32(h), 1.5f);
  int32_t mine = 42, all = 0;
  g->all_gather(&mine, 4, &all);
  EXPECT_EQ(all, 42);
  g->barrier();
  EXPECT_THROW(g->send(0, v, 4), CommError);
  EXPECT_THROW(g->recv(1, v, 4), CommError);
  EXPECT_EQ(g->split(0, 0)->size(), 1);
}

TEST(TcpGroup, BadOptionsAreClearErrors) {
  TcpGroupOptions o;
  o.endpoints = {"127.0.0.1:1", "127.0.0.1:2"};
  o.secret = "s";
  o.rank = 2;
  EXPECT_THROW(make_tcp_group(o), CommError);
  o.rank = 0;
  o.secret = "";
  try {
    make_tcp_group(o);
    ADD_FAILURE();
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("secret"), std::string::npos);
  }
  o.secret = "s";
  o.endpoints = {"127.0.0.1:1", "nohostport"};
  try {
    make_tcp_group(o);
    ADD_FAILURE();
  } catch (const CommError& e) {
    EXPECT_EQ(std::string(e.what()), "endpoint of rank 1 'nohostport' is not host:port");
  }
  o.endpoints = {"127.0.0.1:1", "127.0.0.1:99999"};
  EXPECT_THROW(make_tcp_group(o), CommError);
}

}  // namespace
}  // namespace shardlm::comm
