// The ceilings `bench --device cuda` prints: the read bandwidth (a decode step's own ceiling) and
// the copy bandwidth (issue 6's), measured on GPU 0. Skips without a GPU.
#include <gtest/gtest.h>

#include "core/error.h"
#include "kernels/cuda/ops.h"
#include "gpu/gpu_count.h"

using namespace shardlm;

TEST(CudaCeilings, CopyBandwidthCountsBothWaysAndStaysUnderTheReadBandwidth) {
  if (!test::have_gpu()) GTEST_SKIP() << "no GPU";
  const double read = cuda::measure_read_bandwidth(0, size_t(1) << 30);
  const double copy = cuda::measure_copy_bandwidth(0, size_t(512) << 20);
  std::printf("read %.1f GB/s, copy %.1f GB/s (read + written)\n", read / 1e9, copy / 1e9);
  EXPECT_GT(read, 100e9);  // any HBM GPU; Hopper's read 3-4.5 TB/s
  // Reads and writes share the memory's bandwidth, counted both: under the read-only figure, but
  // far above half of it (were the written bytes not counted, it would be near half).
  EXPECT_LT(copy, 1.05 * read);
  EXPECT_GT(copy, 0.6 * read);
  EXPECT_THROW(cuda::measure_copy_bandwidth(0, 4096), Error);
}
