// Point-to-point traffic of the MPI backend: exact bytes for every size, ordering, send_recv
// rings that would deadlock if either half blocked, and the traffic counters.
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "comm/mpi/mpi_group.h"
#include "mpi_test_world.h"

namespace shardlm::test {
namespace {

// Bytes that differ with sender, receiver, message and position, so a swapped or shifted
// message shows.
std::vector<uint8_t> pattern(size_t bytes, int from, int to, int message) {
  std::vector<uint8_t> data(bytes);
  uint32_t x = uint32_t(from * 7919 + to * 104729 + message * 1299709 + 1);
  for (auto& b : data) {
    x = x * 1664525u + 1013904223u;
    b = uint8_t(x >> 24);
  }
  return data;
}

TEST(MpiWorld, RanksAreTheLaunchRanks) {
  auto group = fresh_world();
  EXPECT_TRUE(comm::launched_by_mpirun());
  EXPECT_EQ(group->backend(), "mpi");
  EXPECT_EQ(group->size(), std::atoi(std::getenv("OMPI_COMM_WORLD_SIZE")));
  EXPECT_EQ(group->rank(), std::atoi(std::getenv("OMPI_COMM_WORLD_RANK")));
  std::vector<int32_t> ranks(size_t(group->size()));
  int32_t mine = group->rank();
  group->all_gather(&mine, sizeof mine, ranks.data());
  for (int r = 0; r < group->size(); ++r) EXPECT_EQ(ranks[size_t(r)], r);
}

TEST(MpiPointToPoint, EverySizeArrivesExactlyAndInOrder) {
  auto group = fresh_world();
  const int me = group->rank(), n = group->size();
  const std::vector<size_t> sizes = {0, 1, 7, 4096, 65537, size_t(16) << 20};
  // Rank 0 sends every size to every other rank, then each answers with its own pattern.
  for (int peer = 1; peer < n; ++peer) {
    if (me == 0) {
      for (size_t i = 0; i < sizes.size(); ++i) {
        auto out = pattern(sizes[i], 0, peer, int(i));
        group->send(peer, out.data(), out.size());
      }
      for (size_t i = 0; i < sizes.size(); ++i) {
        std::vector<uint8_t> in(sizes[i], 0xEE);
        group->recv(peer, in.data(), in.size());
        EXPECT_EQ(in, pattern(sizes[i], peer, 0, int(i))) << "size " << sizes[i] << " from rank " << peer;
      }
    } else if (me == peer) {
      for (size_t i = 0; i < sizes.size(); ++i) {
        std::vector<uint8_t> in(sizes[i], 0xEE);
        group->recv(0, in.data(), in.size());
        EXPECT_EQ(in, pattern(sizes[i], 0, me, int(i))) << "size " << sizes[i];
      }
      for (size_t i = 0; i < sizes.size(); ++i) {
        auto out = pattern(sizes[i], me, 0, int(i));
        group->send(0, out.data(), out.size());
      }
    }
  }
  group->barrier();
}

TEST(MpiPointToPoint, MessagesAboveTheIntCountTravelAsOneDerivedElement) {
  // The path a message over 2 GiB takes (MPI counts are ints), reached with a lowered threshold:
  // sizes below, at, above and at multiples of the block, received exactly.
  auto group = fresh_world();
  as_mpi(*group).set_large_message_bytes(1000);
  const int me = group->rank(), n = group->size();
  const std::vector<size_t> sizes = {999, 1000, 1001, 4000, 4567};
  const int right = (me + 1) % n, left = (me + n - 1) % n;
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto out = pattern(sizes[i], me, right, int(i));
    std::vector<uint8_t> in(sizes[i]);
    group->send_recv(right, out.data(), out.size(), left, in.data(), in.size());
    EXPECT_EQ(in, pattern(sizes[i], left, me, int(i))) << "size " << sizes[i];
  }
}

TEST(MpiPointToPoint, SendRecvRingExchangesUnequalSizesWithoutDeadlock) {
  auto group = fresh_world();
  const int me = group->rank(), n = group->size();
  const int right = (me + 1) % n, left = (me + n - 1) % n;
  // Rank r sends (r + 1) * base bytes: every rank sends and receives a different size, and the
  // 4 MB round needs both halves in flight at once (MPI's rendezvous protocol).
  for (size_t base : {size_t(1), size_t(3000), size_t(4) << 20}) {
    auto out = pattern(size_t(me + 1) * base, me, right, int(base));
    std::vector<uint8_t> in(size_t(left + 1) * base);
    group->send_recv(right, out.data(), out.size(), left, in.data(), in.size());
    EXPECT_EQ(in, pattern(size_t(left + 1) * base, left, me, int(base))) << "base " << base;
  }
  // Both directions between the same two ranks at once.
  if (n >= 2 && me < 2) {
    const int other = 1 - me;
    auto out = pattern(size_t(2) << 20, me, other, 99);
    std::vector<uint8_t> in(size_t(2) << 20);
    group->send_recv(other, out.data(), out.size(), other, in.data(), in.size());
    EXPECT_EQ(in, pattern(size_t(2) << 20, other, me, 99));
  }
}

TEST(MpiPointToPoint, StatsCountTrafficAndTime) {
  auto group = fresh_world();
  const int me = group->rank();
  std::vector<uint8_t> buffer(10000, 1);
  if (me == 0) {
    group->send(1, buffer.data(), 10000);
    group->send(1, buffer.data(), 500);
  } else if (me == 1) {
    group->recv(0, buffer.data(), 10000);
    group->recv(0, buffer.data(), 500);
  }
  comm::CommStats stats = group->stats();
  if (me == 0) {
    EXPECT_EQ(stats.bytes_sent, 10500u);
    EXPECT_EQ(stats.messages_sent, 2u);
    EXPECT_EQ(stats.bytes_received, 0u);
  } else if (me == 1) {
    EXPECT_EQ(stats.bytes_received, 10500u);
    EXPECT_EQ(stats.bytes_sent, 0u);
  }
  if (me < 2) {
    EXPECT_GT(stats.seconds, 0.0);
  }
  group->reset_stats();
  EXPECT_EQ(group->stats().bytes_sent, 0u);
  EXPECT_EQ(group->stats().seconds, 0.0);
  group->barrier();
}

TEST(MpiPointToPoint, PeerOutsideTheGroupIsAnError) {
  auto group = fresh_world();
  uint8_t byte = 0;
  EXPECT_THROW(group->send(group->size(), &byte, 1), comm::CommError);
  EXPECT_THROW(group->recv(-1, &byte, 1), comm::CommError);
  group->barrier();  // a bad argument does not break the group
}

}  // namespace
}  // namespace shardlm::test
