// Point-to-point messages of the shm backend between real processes: sizes around the ring's
// capacity, both directions, ring exchanges, and wrong sizes turning into CommError.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "comm/shm/shm_group.h"
#include "multiprocess.h"
#include "shm_test_util.h"

namespace shardlm::comm {
namespace {

using test::expect_passed;
using test::run_ranks;

constexpr size_t kMiB = size_t(1) << 20;

// Bytes that differ per sender, per message and per position, so a shifted, truncated or
// misrouted message cannot compare equal.
std::vector<uint8_t> pattern(size_t bytes, int sender, int message) {
  std::vector<uint8_t> v(bytes);
  uint32_t x = 0x9e3779b9u * uint32_t(sender + 1) ^ uint32_t(message) * 0x85ebca6bu;
  for (size_t i = 0; i < bytes; ++i) {
    x = x * 1664525u + 1013904223u;
    v[i] = uint8_t(x >> 24);
  }
  return v;
}

TEST(ShmP2p, ManySizesBothDirections) {
  const std::string name = new_shm_group_name();
  // 0, 1, odd, exactly the ring, just over it, several rings' worth.
  const std::vector<size_t> sizes = {0, 1, 7, 4093, 65536, kMiB - 16, kMiB, kMiB + 1, 3 * kMiB + 5};
  expect_passed(run_ranks(2, [&](int rank) {
    auto g = make_shm_group({name, rank, 2});
    EXPECT_EQ(g->backend(), "shm");
    EXPECT_EQ(g->rank(), rank);
    EXPECT_EQ(g->size(), 2);
    int message = 0;
    uint64_t sent = 0, received = 0;
    for (int direction = 0; direction < 2; ++direction)
      for (size_t bytes : sizes) {
        const int sender = direction;
        if (rank == sender) {
          auto data = pattern(bytes, sender, message);
          g->send(1 - rank, data.data(), bytes);
          sent += bytes;
        } else {
          std::vector<uint8_t> got(bytes, 0xEE);
          g->recv(1 - rank, got.data(), bytes);
          ASSERT_EQ(got, pattern(bytes, sender, message)) << "message " << message << " of " << bytes << " bytes";
          received += bytes;
        }
        ++message;
      }
    // Many small messages in a row: far more than the ring holds, none lost or reordered.
    for (int i = 0; i < 20000; ++i) {
      uint32_t v = uint32_t(i) * 2654435761u;
      if (rank == 0) {
        g->send(1, &v, sizeof v);
      } else {
        uint32_t got = 0;
        g->recv(0, &got, sizeof got);
        ASSERT_EQ(got, v) << "small message " << i;
      }
    }
    CommStats s = g->stats();
    EXPECT_EQ(s.bytes_sent, sent + (rank == 0 ? 20000 * 4 : 0));
    EXPECT_EQ(s.bytes_received, received + (rank == 1 ? 20000 * 4 : 0));
    EXPECT_EQ(s.messages_sent, uint64_t(sizes.size()) + (rank == 0 ? 20000 : 0));
    EXPECT_GT(s.seconds, 0.0);
    g->reset_stats();
    EXPECT_EQ(g->stats().bytes_sent, 0u);
  }));
}

TEST(ShmP2p, SendRecvRingWithMessagesLargerThanTheRing) {
  const std::string name = new_shm_group_name();
  const int n = 3;
  // Every rank sends to its right and receives from its left at once, each message several rings
  // long and of a different size per rank: blocking sends would deadlock here.
  auto bytes_of = [](int sender) { return 2 * kMiB + size_t(sender) * 1000 + 1; };
  expect_passed(run_ranks(n, [&](int rank) {
    auto g = make_shm_group({name, rank, n});
    const int right = (rank + 1) % n, left = (rank + n - 1) % n;
    for (int round = 0; round < 3; ++round) {
      auto mine = pattern(bytes_of(rank), rank, round);
      std::vector<uint8_t> got(bytes_of(left));
      g->send_recv(right, mine.data(), mine.size(), left, got.data(), got.size());
      ASSERT_EQ(got, pattern(bytes_of(left), left, round)) << "round " << round;
    }
  }));
}

TEST(ShmP2p, PairExchangesBothWaysAtOnce) {
  const std::string name = new_shm_group_name();
  expect_passed(run_ranks(2, [&](int rank) {
    auto g = make_shm_group({name, rank, 2});
    const int peer = 1 - rank;
    for (size_t bytes : {size_t(0), size_t(5), 3 * kMiB + 3}) {
      auto mine = pattern(bytes + size_t(rank), rank, int(bytes));
      std::vector<uint8_t> got(bytes + size_t(peer));
      g->send_recv(peer, mine.data(), mine.size(), peer, got.data(), got.size());
      ASSERT_EQ(got, pattern(bytes + size_t(peer), peer, int(bytes)));
    }
    // Sending to and receiving from oneself is a copy (a ring of one rank).
    uint8_t a[3] = {1, 2, 3}, b[3] = {};
    g->send_recv(rank, a, 3, rank, b, 3);
    EXPECT_EQ(std::memcmp(a, b, 3), 0);
  }));
}

TEST(ShmP2p, WrongSizeIsCommErrorAndBreaksTheGroup) {
  const std::string name = new_shm_group_name();
  expect_passed(run_ranks(2, [&](int rank) {
    auto g = make_shm_group({name, rank, 2});
    std::vector<uint8_t> buf(100, 7);
    if (rank == 0) {
      g->send(1, buf.data(), 100);
      return;
    }
    try {
      g->recv(0, buf.data(), 99);
      ADD_FAILURE() << "a 100-byte message was received as 99 bytes";
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("rank 0 sent a message of 100 bytes, but rank 1 expected 99"),
                std::string::npos)
          << e.what();
    }
    // The ring may hold the rest of that message: later calls refuse rather than misread.
    EXPECT_THROW(g->recv(0, buf.data(), 1), CommError);
  }));
}

TEST(ShmP2p, BadPeerIsCommError) {
  const std::string name = new_shm_group_name();
  expect_passed(run_ranks(2, [&](int rank) {
    auto g = make_shm_group({name, rank, 2});
    uint8_t b = 0;
    EXPECT_THROW(g->send(2, &b, 1), CommError);
    EXPECT_THROW(g->send(-1, &b, 1), CommError);
    EXPECT_THROW(g->recv(rank, &b, 1), CommError);
    // The refused calls did not break the group.
    g->barrier();
  }));
}

}  // namespace
}  // namespace shardlm::comm
