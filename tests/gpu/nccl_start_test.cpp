// A GPU rank whose peers never join its NCCL group (lost between the host group's agreement and
// NCCL's start) gives up after its timeout with an error, instead of waiting forever. Needs one
// GPU and NCCL; skips without them.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "comm/group.h"
#include "gpu/gpu_count.h"

#if SHARDLM_HAVE_NCCL
#include "comm/nccl/nccl_group.h"

using namespace shardlm;

TEST(Nccl, ARankWhosePeerNeverJoinsGivesUpAfterItsTimeout) {
  if (!test::have_gpu()) GTEST_SKIP() << "no CUDA device";
  std::string why;
  const std::vector<uint8_t> id = comm::NcclGroup::new_id(&why);
  if (id.empty()) GTEST_SKIP() << why;
  const auto start = std::chrono::steady_clock::now();
  try {
    comm::NcclGroup::join(id, /*rank=*/0, /*size=*/2, /*device=*/0, std::chrono::seconds(3));
    FAIL() << "joined a group of two whose other rank never started";
  } catch (const comm::CommError& e) {
    EXPECT_NE(std::string(e.what()).find("did not finish in 3 s"), std::string::npos) << e.what();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(seconds, 3.0);
  EXPECT_LT(seconds, 20.0);  // the timeout and the abort, not a hang
}
#endif
