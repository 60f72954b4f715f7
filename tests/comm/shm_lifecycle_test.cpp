// Joining, failing and leaving of the shm backend: any start order, a rank that never comes, a
// rank killed while others wait, misconfigured ranks, and 200 create/destroy cycles that must
// leave no fd, mapping, thread or /dev/shm entry behind.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "comm/shm/shm_group.h"
#include "multiprocess.h"
#include "shm_test_util.h"

namespace shardlm::comm {
namespace {

using namespace std::chrono_literals;
using test::expect_passed;
using test::leftover_segments;
using test::run_ranks;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Runs `call`, which must throw CommError whose message contains every one of `parts`.
template <class F>
void expect_comm_error(F&& call, const std::vector<std::string>& parts) {
  try {
    call();
    ADD_FAILURE() << "no CommError";
  } catch (const CommError& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(ShmLifecycle, JoinsInAnyOrder) {
  for (int reverse = 0; reverse < 2; ++reverse) {
    const std::string name = new_shm_group_name();
    expect_passed(run_ranks(4, [&](int rank) {
      std::this_thread::sleep_for(std::chrono::milliseconds(30 * (reverse ? 3 - rank : rank)));
      auto g = make_shm_group({name, rank, 4});
      // The segment is gone from /dev/shm as soon as everyone is in.
      EXPECT_FALSE(std::filesystem::exists("/dev/shm" + name));
      float x = float(rank);
      g->all_reduce_sum(&x, 1);
      EXPECT_EQ(x, 6.0f);
    }));
  }
}

TEST(ShmLifecycle, GroupOfOne) {
  auto g = make_shm_group({new_shm_group_name(), 0, 1});
  float x[3] = {1, 2, 3};
  g->all_reduce_sum(x, 3);
  EXPECT_EQ(x[2], 3.0f);
  g->barrier();
  int32_t all = 0, mine = 42;
  g->all_gather(&mine, 4, &all);
  EXPECT_EQ(all, 42);
  EXPECT_EQ(g->split(7, 0)->size(), 1);
  EXPECT_EQ(leftover_segments(), std::vector<std::string>{});
}

TEST(ShmLifecycle, BadOptionsAreCommErrors) {
  expect_comm_error([] { make_shm_group({"no-slash", 0, 2}); }, {"'no-slash'"});
  expect_comm_error([] { make_shm_group({"/a/b", 0, 2}); }, {"'/a/b'"});
  expect_comm_error([] { make_shm_group({"/shardlm-bad-rank", 2, 2}); }, {"rank 2"});
  expect_comm_error([] { make_shm_group({"/shardlm-bad-size", 0, 0}); }, {"size 0"});
  EXPECT_EQ(leftover_segments(), std::vector<std::string>{});
}

TEST(ShmLifecycle, JoinTimeoutNamesTheMissingRank) {
  const std::string name = new_shm_group_name();
  expect_passed(run_ranks(3, [&](int rank) {
    if (rank == 2) return;  // never comes
    auto start = Clock::now();
    expect_comm_error([&] { make_shm_group({name, rank, 3, 300ms}); }, {"rank 2 to join", name});
    EXPECT_LT(seconds_since(start), 1.5);
  }));
}

TEST(ShmLifecycle, LateRankAfterTheOthersGaveUpFailsToo) {
  const std::string name = new_shm_group_name();
  expect_passed(run_ranks(2, [&](int rank) {
    if (rank == 1) std::this_thread::sleep_for(500ms);
    EXPECT_THROW(make_shm_group({name, rank, 2, 200ms}), CommError);
  }));
}

TEST(ShmLifecycle, MismatchedSizeFailsEveryRankFast) {
  const std::string name = new_shm_group_name();
  expect_passed(run_ranks(2, [&](int rank) {
    auto start = Clock::now();
    EXPECT_THROW(make_shm_group({name, rank, rank == 0 ? 2 : 3, 5000ms}), CommError);
    EXPECT_LT(seconds_since(start), 2.0);  // not the 5 s timeout
  }));
}

TEST(ShmLifecycle, DuplicateRankFailsEveryRankFast) {
  const std::string name = new_shm_group_name();
  expect_passed(run_ranks(2, [&](int) {
    auto start = Clock::now();
    EXPECT_THROW(make_shm_group({name, 0, 2, 5000ms}), CommError);
    EXPECT_LT(seconds_since(start), 2.0);
  }));
}

TEST(ShmLifecycle, KilledRankIsNamedWithinTwoSeconds) {
  const std::string name = new_shm_group_name();
  auto outcomes = run_ranks(3, [&](int rank) {
    auto g = make_shm_group({name, rank, 3});
    g->barrier();
    if (rank == 2) {
      std::this_thread::sleep_for(200ms);  // the others are asleep in the barrier by now
      ::raise(SIGKILL);
    }
    auto start = Clock::now();
    expect_comm_error([&] { g->barrier(); }, {"rank 2 (pid", "exited"});
    EXPECT_LT(seconds_since(start), 0.2 + 2.0);
  });
  EXPECT_EQ(outcomes[2].exit_code, 128 + SIGKILL);
  for (int r = 0; r < 2; ++r) EXPECT_EQ(outcomes[size_t(r)].exit_code, 0) << outcomes[size_t(r)].output;
  EXPECT_EQ(leftover_segments(), std::vector<std::string>{});
}

TEST(ShmLifecycle, KilledSenderFailsTheReceiverAfterItsLastMessage) {
  const std::string name = new_shm_group_name();
  auto outcomes = run_ranks(2, [&](int rank) {
    auto g = make_shm_group({name, rank, 2});
    std::vector<uint8_t> big(300000, 1);
    if (rank == 1) {
      g->send(0, big.data(), big.size());
      big[999] = 9;
      g->send(0, big.data(), 1000);
      std::this_thread::sleep_for(100ms);
      ::raise(SIGKILL);
    }
    std::vector<uint8_t> got(300000);
    g->recv(1, got.data(), got.size());
    EXPECT_EQ(got, big);
    std::this_thread::sleep_for(400ms);  // rank 1 is dead now, but what it sent is still delivered
    g->recv(1, got.data(), 1000);
    EXPECT_EQ(got[999], 9);
    auto start = Clock::now();
    expect_comm_error([&] { g->recv(1, got.data(), 5); }, {"rank 1 (pid", "exited"});
    EXPECT_LT(seconds_since(start), 2.0);
  });
  EXPECT_EQ(outcomes[1].exit_code, 128 + SIGKILL);
  EXPECT_EQ(outcomes[0].exit_code, 0) << outcomes[0].output;
}

TEST(ShmLifecycle, DeathFoundByOneRankFailsRanksWaitingElsewhere) {
  // Rank 0 waits on rank 1, which waits on rank 2, which dies. Rank 1 finds it; rank 0, whose own
  // peer is alive, learns it through the segment instead of waiting for its timeout.
  const std::string name = new_shm_group_name();
  auto outcomes = run_ranks(3, [&](int rank) {
    auto g = make_shm_group({name, rank, 3});
    uint8_t b = 0;
    if (rank == 2) {
      std::this_thread::sleep_for(150ms);
      ::raise(SIGKILL);
    }
    auto start = Clock::now();
    if (rank == 1) {
      expect_comm_error([&] { g->recv(2, &b, 1); }, {"rank 2 (pid", "exited"});
      std::this_thread::sleep_for(1000ms);  // stay alive: rank 0 must not blame rank 1
    } else {
      expect_comm_error([&] { g->recv(1, &b, 1); }, {"rank 2 (pid", "exited"});
      EXPECT_LT(seconds_since(start), 2.0);
    }
  });
  EXPECT_EQ(outcomes[2].exit_code, 128 + SIGKILL);
  for (int r = 0; r < 2; ++r) EXPECT_EQ(outcomes[size_t(r)].exit_code, 0) << outcomes[size_t(r)].output;
}

TEST(ShmLifecycle, SilentPeerTimesOut) {
  const std::string name = new_shm_group_name();
  expect_passed(run_ranks(2, [&](int rank) {
    auto g = make_shm_group({name, rank, 2, 300ms});
    if (rank == 1) {
      std::this_thread::sleep_for(1200ms);  // alive, but never sends
      return;
    }
    auto start = Clock::now();
    uint8_t b;
    expect_comm_error([&] { g->recv(1, &b, 1); }, {"timed out after 300 ms waiting for rank 1"});
    EXPECT_GT(seconds_since(start), 0.29);
    EXPECT_LT(seconds_since(start), 1.0);
  }));
}

size_t count_entries(const char* dir) {
  size_t n = 0;
  for (auto it = std::filesystem::directory_iterator(dir); it != std::filesystem::directory_iterator(); ++it) ++n;
  return n;
}

// Lines of a file, or only those containing `needle`.
size_t count_lines(const char* path, const std::string& needle = "") {
  std::ifstream f(path);
  size_t n = 0;
  for (std::string line; std::getline(f, line);) n += line.find(needle) != std::string::npos;
  return n;
}

TEST(ShmLifecycle, CreateDestroyCyclesLeakNothing) {
  const std::string base = new_shm_group_name();
  expect_passed(run_ranks(2, [&](int rank) {
    auto cycle = [&](int i) {
      auto g = make_shm_group({base + "-" + std::to_string(i), rank, 2});
      float x[16];
      for (float& v : x) v = float(rank + 1);
      g->all_reduce_sum(x, 16);
      ASSERT_EQ(x[15], 3.0f);
      auto sub = g->split(0, rank);  // a native split shares the mapping; both must go
      sub->barrier();
      if (i < 0) {
        ASSERT_EQ(count_lines("/proc/self/maps", "/dev/shm/"), 1u);  // the needle used below finds it
      }
    };
    cycle(-1);  // warm up whatever the first use allocates once (locale, fmt)
    const size_t fds = count_entries("/proc/self/fd"), maps = count_lines("/proc/self/maps"),
                 tasks = count_entries("/proc/self/task");
    EXPECT_EQ(count_lines("/proc/self/maps", "/dev/shm/"), 0u);
    for (int i = 0; i < 200; ++i) cycle(i);
    EXPECT_EQ(count_entries("/proc/self/fd"), fds);
    EXPECT_EQ(count_entries("/proc/self/task"), tasks);
    EXPECT_EQ(count_lines("/proc/self/maps", "/dev/shm/"), 0u);  // no segment still mapped
#ifndef __SANITIZE_ADDRESS__                                     // ASan's allocator maps more as the heap churns
    EXPECT_EQ(count_lines("/proc/self/maps"), maps);
#else
    (void)maps;
#endif
  }));
}

TEST(ShmLifecycle, MoreRanksThanCoresStillProgress) {
  // 4 ranks on (possibly) 2 cores: waiters must yield and sleep, not spin the peers off the CPU.
  const std::string name = new_shm_group_name();
  auto start = Clock::now();
  expect_passed(run_ranks(4, [&](int rank) {
    auto g = make_shm_group({name, rank, 4});
    std::vector<float> v(4096);
    for (int i = 0; i < 1000; ++i) {
      std::fill(v.begin(), v.end(), float(rank));
      g->all_reduce_sum(v.data(), v.size());
      ASSERT_EQ(v[0], 6.0f);
    }
  }));
  EXPECT_LT(seconds_since(start), 10.0);
}

}  // namespace
}  // namespace shardlm::comm
