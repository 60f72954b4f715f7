#include <gtest/gtest.h>

#include <atomic>

#include "core/error.h"
#include "core/thread_pool.h"

using namespace shardlm;

TEST(ThreadPool, EveryThreadRunsOncePerRegion) {
  for (int n : {1, 2, 3, 5}) {
    ThreadPool pool(n);
    for (int rep = 0; rep < 200; ++rep) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.run([&](int t, int nt) {
        ASSERT_EQ(nt, n);
        hits[size_t(t)]++;
      });
      for (auto& h : hits) ASSERT_EQ(h.load(), 1);
    }
  }
}

TEST(ThreadPool, ParallelForCoversRangeOnceAligned) {
  ThreadPool pool(3);
  for (int64_t n : {1, 7, 64, 1000, 1001}) {
    std::vector<int> seen(static_cast<size_t>(n), 0);
    pool.parallel_for(n, 8, [&](int64_t b, int64_t e) {
      EXPECT_EQ(b % 8, 0);
      for (int64_t i = b; i < e; ++i) seen[size_t(i)]++;
    });
    for (int v : seen) ASSERT_EQ(v, 1);
  }
}

TEST(ThreadPool, RethrowsWorkerErrors) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.run([](int t, int) {
    if (t == 1) fail("boom");
  }),
               Error);
  // The pool still works afterwards.
  std::atomic<int> count{0};
  pool.run([&](int, int) { count++; });
  EXPECT_EQ(count.load(), 2);
}
