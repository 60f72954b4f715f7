// split(): sub-groups own communicators of their own, order members by key then rank, run
// collectives and point-to-point among themselves, and leave nothing behind when destroyed.
#include <gtest/gtest.h>

#include <filesystem>
#include <vector>

#include "mpi_test_world.h"

namespace shardlm::test {
namespace {

size_t open_fds() {
  size_t n = 0;
  for ([[maybe_unused]] auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

TEST(MpiSplit, SubGroupsOrderByKeyAndRunTheirOwnCollectives) {
  auto world = fresh_world();
  const int me = world->rank(), n = world->size();
  // Color by parity; negative colors are allowed. Key reverses the order inside each group.
  const int color = me % 2 == 0 ? -5 : 7;
  auto sub = world->split(color, -me);
  std::vector<int> members;
  for (int r = n - 1; r >= 0; --r)
    if (r % 2 == me % 2) members.push_back(r);
  ASSERT_EQ(sub->size(), int(members.size()));
  EXPECT_EQ(members[size_t(sub->rank())], me);
  EXPECT_EQ(sub->backend(), "mpi");

  // all_reduce and all_gather see only the members.
  float sum = float(me);
  sub->all_reduce_sum(&sum, 1);
  float expected = 0;
  for (int r : members) expected += float(r);
  EXPECT_EQ(sum, expected);
  std::vector<int32_t> gathered(members.size());
  int32_t mine = me;
  sub->all_gather(&mine, sizeof mine, gathered.data());
  for (size_t i = 0; i < members.size(); ++i) EXPECT_EQ(gathered[i], members[i]);

  // Point-to-point in sub-group ranks, while the world carries its own traffic.
  if (sub->size() > 1) {
    int32_t out = me * 3, in = -1;
    const int right = (sub->rank() + 1) % sub->size(), left = (sub->rank() + sub->size() - 1) % sub->size();
    sub->send_recv(right, &out, sizeof out, left, &in, sizeof in);
    EXPECT_EQ(in, members[size_t(left)] * 3);
  }
  sub->barrier();
  float world_sum = 1;
  world->all_reduce_sum(&world_sum, 1);
  EXPECT_EQ(world_sum, float(n));

  // A split of a sub-group.
  auto single = sub->split(sub->rank(), 0);
  EXPECT_EQ(single->size(), 1);
  EXPECT_EQ(single->rank(), 0);
  float alone = 4;
  single->all_reduce_sum(&alone, 1);
  EXPECT_EQ(alone, 4.0f);
}

TEST(MpiSplit, HundredCreateDestroyCyclesLeakNoFds) {
  auto world = fresh_world();
  const int me = world->rank();
  // One cycle first: MPI may open what it needs on first use.
  { auto warm = world->split(me % 2, me); warm->barrier(); }
  const size_t before = open_fds();
  for (int cycle = 0; cycle < 100; ++cycle) {
    auto sub = world->split(cycle % 2 == 0 ? 0 : me % 2, me);
    float x = 1;
    sub->all_reduce_sum(&x, 1);
    ASSERT_EQ(x, float(sub->size())) << "cycle " << cycle;
  }
  for (int cycle = 0; cycle < 20; ++cycle) {
    auto again = fresh_world();
    again->barrier();
  }
  EXPECT_EQ(open_fds(), before);
}

}  // namespace
}  // namespace shardlm::test
