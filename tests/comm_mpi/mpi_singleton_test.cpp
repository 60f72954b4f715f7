// Without mpirun the process is an MPI world of one (singleton init): every call still works,
// collectives return the input, and launched_by_mpirun() says so. ctest runs these directly.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "comm/mpi/mpi_group.h"
#include "core/dtype.h"
#include "mpi_test_world.h"

namespace shardlm::test {
namespace {

TEST(MpiSingleton, AWorldOfOneWorks) {
  if (comm::launched_by_mpirun()) GTEST_SKIP() << "runs without mpirun";
  auto group = fresh_world();
  EXPECT_EQ(group->size(), 1);
  EXPECT_EQ(group->rank(), 0);
  std::vector<float> data = {1.5f, -2.0f, 3.25f};
  group->all_reduce_sum(data.data(), data.size());
  EXPECT_EQ(data, (std::vector<float>{1.5f, -2.0f, 3.25f}));
  uint16_t half = f32_to_bf16(0.75f);
  group->all_reduce_sum_bf16(&half, 1);
  EXPECT_EQ(bf16_to_f32(half), 0.75f);
  int32_t mine = 42, all = 0;
  group->all_gather(&mine, sizeof mine, &all);
  EXPECT_EQ(all, 42);
  group->barrier();
  // A message to oneself.
  const char out[] = "to myself";
  char in[sizeof out] = {};
  group->send_recv(0, out, sizeof out, 0, in, sizeof in);
  EXPECT_STREQ(in, out);
  auto sub = group->split(3, 0);
  EXPECT_EQ(sub->size(), 1);
  sub->barrier();
}

}  // namespace
}  // namespace shardlm::test
