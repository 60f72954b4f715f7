// How many weight rows a block of the streaming matrix-vector kernel takes at a time
// (matmul_rows_per_block: host code, no GPU needed, so this runs in CI too). The choices for the
// 1b and 8b presets are the ones measured fastest on an H200 (kernels/cuda/matmul.cu): 528 blocks
// resident there (132 SMs x 4).
#include <gtest/gtest.h>

#include "kernels/cuda/ops.h"

using namespace shardlm;

namespace {

constexpr int64_t kH200Blocks = 528;

int rows_per_block(int64_t rows, int64_t cols, bool swiglu = false, DType dtype = DType::BF16,
                   int64_t resident = kH200Blocks) {
  return cuda::matmul_rows_per_block(rows, cols, dtype, swiglu, resident);
}

}  // namespace

TEST(CudaHost, RowsPerBlockKeepTheBusiestBlockShortest) {
  // 1b preset: q|k|v in one round of 8-row groups (384 groups) rather than 1.45 rounds of 4-row
  // ones; o in one round of 4-row groups; down in one round of 4-row groups (512), each warp then
  // reading 4,096 weights of its row (2-row groups: two rounds, 2,048 weights a warp).
  EXPECT_EQ(rows_per_block(3072, 2048), 8);
  EXPECT_EQ(rows_per_block(2048, 2048), 4);
  EXPECT_EQ(rows_per_block(16384, 2048, /*swiglu=*/true), 8);
  EXPECT_EQ(rows_per_block(2048, 8192), 4);
  // 8b preset: q|k|v in 3 rounds of 4-row groups (8-row groups: 2 rounds twice as long); o in one
  // round of 8-row groups (4,096 weights a warp); down in two rounds of 4-row groups.
  EXPECT_EQ(rows_per_block(6144, 4096), 4);
  EXPECT_EQ(rows_per_block(4096, 4096), 8);
  EXPECT_EQ(rows_per_block(28672, 4096, /*swiglu=*/true), 8);
  EXPECT_EQ(rows_per_block(4096, 14336), 4);
}

TEST(CudaHost, RowsPerBlockLeaveEachWarpAWholeBatchOfLoads) {
  // Narrow rows: a warp's slice must hold a batch of loads (4 x 256 bf16 weights, 2 x 256 f32), so
  // short rows are not split at all.
  EXPECT_EQ(rows_per_block(1024, 1024), 8);
  EXPECT_EQ(rows_per_block(4096, 256), 8);
  EXPECT_EQ(rows_per_block(100, 8), 8);
  // The small preset's down (1,024 x 3,072): at least 2 rows (4 slices of 768 weights), one round.
  EXPECT_EQ(rows_per_block(1024, 3072), 2);
  // f32 rows take half the weights a batch, so they split into more slices than bf16 ones.
  EXPECT_EQ(rows_per_block(64, 2048, false, DType::BF16, 64), 4);
  EXPECT_EQ(rows_per_block(64, 2048, false, DType::F32, 64), 2);
}

TEST(CudaHost, RowsPerBlockKeepSwiGluPairsTogether) {
  // (gate, up) rows come in pairs that one block's epilogue combines: never 1 row a block.
  for (int64_t cols : {8192, 16384, 65536})
    for (int64_t resident : {1, 132, 528, 100000}) {
      const int r = rows_per_block(64, cols, /*swiglu=*/true, DType::BF16, resident);
      EXPECT_GE(r, 2) << cols << " columns, " << resident << " blocks";
      EXPECT_EQ(8 % r, 0);
    }
}

TEST(CudaHost, RowsPerBlockAreAlwaysOneTwoFourOrEight) {
  for (DType dtype : {DType::BF16, DType::F32, DType::F16, DType::Q8_0, DType::Q4_0})
    for (int64_t rows : {1, 7, 512, 3072, 151680})
      for (int64_t cols : {32, 1024, 8192, 14336})
        for (int64_t resident : {0, 1, 528}) {
          const int r = rows_per_block(rows, cols, false, dtype, resident);
          EXPECT_TRUE(r == 1 || r == 2 || r == 4 || r == 8) << r;
        }
}
