// Collectives of the MPI backend: exact sums, the same bits on every rank, bf16 rounded once,
// all_gather layout, and a barrier that really waits.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "mpi_test_world.h"

namespace shardlm::test {
namespace {

using comm::mpi::AllReduceAlgorithm;

const char* name(AllReduceAlgorithm a) {
  switch (a) {
    case AllReduceAlgorithm::reduce_then_broadcast: return "reduce_then_broadcast";
    case AllReduceAlgorithm::ring: return "ring";
    case AllReduceAlgorithm::native: return "native";
    case AllReduceAlgorithm::automatic: return "automatic";
  }
  return "?";
}

// Values of very different magnitudes and signs, so the order of summation changes the bits.
float awkward_value(int rank, size_t i) {
  uint32_t x = uint32_t(rank + 1) * 2654435761u ^ uint32_t(i) * 2246822519u;
  x ^= x >> 15;
  x *= 2246822519u;
  x ^= x >> 13;
  float mantissa = 1.0f + float(x & 0xFFFFF) / float(1 << 20);
  int exponent = int((x >> 20) % 41) - 20;
  return std::ldexp((x >> 31) ? -mantissa : mantissa, exponent);
}

TEST(MpiAllReduce, SumsAreExactForEveryAlgorithmAndSize) {
  auto group = fresh_world();
  const int me = group->rank(), n = group->size();
  as_mpi(*group).set_segment_elements(1000);  // several pipelined segments for the larger sizes
  for (auto algorithm : {AllReduceAlgorithm::automatic, AllReduceAlgorithm::reduce_then_broadcast,
                         AllReduceAlgorithm::ring, AllReduceAlgorithm::native}) {
    as_mpi(*group).set_all_reduce_algorithm(algorithm);
    for (size_t count : {size_t(1), size_t(2), size_t(999), size_t(1000), size_t(4096), size_t(262147)}) {
      SCOPED_TRACE(::testing::Message() << name(algorithm) << ", count " << count);
      // Small integers: every order of summation gives the exact sum.
      std::vector<float> data(count);
      for (size_t i = 0; i < count; ++i) data[i] = float(int((i * 31 + size_t(me) * 1000) % 2001) - 1000);
      group->all_reduce_sum(data.data(), count);
      size_t wrong = 0;
      for (size_t i = 0; i < count; ++i) {
        float expected = 0;
        for (int r = 0; r < n; ++r) expected += float(int((i * 31 + size_t(r) * 1000) % 2001) - 1000);
        if (data[i] != expected && wrong++ < 3)
          ADD_FAILURE() << "element " << i << ": " << data[i] << " != " << expected;
      }
      EXPECT_EQ(wrong, 0u);
    }
  }
}

TEST(MpiAllReduce, EveryRankGetsTheSameBits) {
  auto group = fresh_world();
  const int me = group->rank(), n = group->size();
  // The algorithms offered as guaranteed (each element is summed by one rank only), at a size
  // where automatic picks the tree (3+ ranks) and one where it picks the ring.
  for (auto [algorithm, count] : {std::pair{AllReduceAlgorithm::automatic, size_t(1000)},
                                  std::pair{AllReduceAlgorithm::automatic, size_t(100003)},
                                  std::pair{AllReduceAlgorithm::reduce_then_broadcast, size_t(100003)},
                                  std::pair{AllReduceAlgorithm::ring, size_t(100003)}}) {
    SCOPED_TRACE(::testing::Message() << name(algorithm) << ", count " << count);
    as_mpi(*group).set_all_reduce_algorithm(algorithm);
    std::vector<float> data(count);
    for (size_t i = 0; i < count; ++i) data[i] = awkward_value(me, i);
    group->all_reduce_sum(data.data(), count);
    // Close to the sum in rank order (the order is the algorithm's own choice)...
    size_t far = 0;
    for (size_t i = 0; i < count; ++i) {
      double expected = 0, magnitude = 0;
      for (int r = 0; r < n; ++r) {
        expected += awkward_value(r, i);
        magnitude += std::fabs(awkward_value(r, i));
      }
      if (std::fabs(data[i] - expected) > 1e-6 * magnitude) ++far;
    }
    EXPECT_EQ(far, 0u);
    // ...and bit for bit what every other rank got.
    std::vector<float> everyone(count * size_t(n));
    group->all_gather(data.data(), count * sizeof(float), everyone.data());
    for (int r = 0; r < n; ++r)
      EXPECT_EQ(std::memcmp(everyone.data() + size_t(r) * count, data.data(), count * sizeof(float)), 0)
          << "rank " << r << " holds other bits than rank " << me;
  }
}

TEST(MpiAllReduce, Bf16IsSummedInF32AndRoundedOnce) {
  auto group = fresh_world();
  const int me = group->rank(), n = group->size();
  // Element 0: 256 + 1 + 1: bf16 steps by 2 at 256, so rounding after each hop would give 256;
  // rounded once, n = 3 gives 258. Others: small integers, exact in bf16 and f32.
  const size_t count = 5000;
  std::vector<uint16_t> data(count);
  data[0] = f32_to_bf16(me == 0 ? 256.0f : 1.0f);
  for (size_t i = 1; i < count; ++i) data[i] = f32_to_bf16(float(int(i % 17) - 8 + me));
  group->all_reduce_sum_bf16(data.data(), count);
  EXPECT_EQ(bf16_to_f32(data[0]), bf16_to_f32(f32_to_bf16(256.0f + float(n - 1))));
  for (size_t i = 1; i < count; ++i) {
    float expected = 0;
    for (int r = 0; r < n; ++r) expected += float(int(i % 17) - 8 + r);
    ASSERT_EQ(bf16_to_f32(data[i]), expected) << "element " << i;
  }
}

TEST(MpiAllGather, BlocksLandInRankOrder) {
  auto group = fresh_world();
  const int me = group->rank(), n = group->size();
  for (size_t bytes : {size_t(0), size_t(1), size_t(13), size_t(300000)}) {
    std::vector<uint8_t> mine(bytes);
    for (size_t i = 0; i < bytes; ++i) mine[i] = uint8_t(i * 7 + size_t(me) * 101);
    std::vector<uint8_t> all(bytes * size_t(n), 0xEE);
    group->all_gather(mine.data(), bytes, all.data());
    for (int r = 0; r < n; ++r)
      for (size_t i = 0; i < bytes; ++i)
        ASSERT_EQ(all[size_t(r) * bytes + i], uint8_t(i * 7 + size_t(r) * 101)) << "bytes " << bytes << " rank " << r;
  }
  // In place: this rank's block already sits in the output.
  std::vector<int32_t> all(size_t(n), -1);
  all[size_t(me)] = me * 10;
  group->all_gather(&all[size_t(me)], sizeof(int32_t), all.data());
  for (int r = 0; r < n; ++r) EXPECT_EQ(all[size_t(r)], r * 10);
}

TEST(MpiBarrier, NoRankLeavesBeforeTheLastArrives) {
  auto group = fresh_world();
  group->barrier();
  const auto start = std::chrono::steady_clock::now();
  if (group->rank() == group->size() - 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  group->barrier();
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(waited, 0.25);
}

}  // namespace
}  // namespace shardlm::test
