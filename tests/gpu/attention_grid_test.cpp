// How the paged attention spreads a step over blocks (attention_grid: host code, no GPU needed, so
// this runs in CI too). The choices are the ones measured on an H200 (kernels/cuda/attention.cu):
// the query heads of a kv head share a block only where that leaves at least 256 blocks, and
// then about 256 blocks in all; one head a block aims at 512.
#include <gtest/gtest.h>
#include <stdlib.h>

#include "kernels/cuda/ops.h"

using namespace shardlm;

namespace {

// The 1b preset on one GPU: 32 query heads, 8 kv heads, head_dim 64.
const cuda::AttentionShape kLlama1b{32, 4, 0, 0, {8, 64, 16}};

cuda::AttentionGrid grid(int64_t tokens, int64_t max_pos, const cuda::AttentionShape& shape = kLlama1b) {
  return cuda::attention_grid(tokens, max_pos, shape);
}

}  // namespace

TEST(CudaHost, AttentionGridSharesHeadsWhereBlocksRemain) {
  EXPECT_EQ(cuda::attention_heads_per_block(kLlama1b), 4);
  // Decode after 512 tokens: 4 heads a block would leave 64 blocks, so one head, 8 splits (256).
  EXPECT_EQ(grid(1, 511), (cuda::AttentionGrid{8, 1}));
  // After 1,024: two heads, 16 splits (256 blocks); after 2,048 and 8,192: four heads.
  EXPECT_EQ(grid(1, 1023), (cuda::AttentionGrid{16, 2}));
  EXPECT_EQ(grid(1, 2047), (cuda::AttentionGrid{32, 4}));
  EXPECT_EQ(grid(1, 8191), (cuda::AttentionGrid{32, 4}));  // 8 x 32 = 256 blocks, not 512
  // A batch of 16 after 512 tokens: 128 (token, kv head) rows, two splits each.
  EXPECT_EQ(grid(16, 511), (cuda::AttentionGrid{2, 4}));
  // A short context is not split.
  EXPECT_EQ(grid(1, 10), (cuda::AttentionGrid{1, 1}));
}

TEST(CudaHost, AttentionGridKeepsHeadsApartWhereTheyCannotShare) {
  // A tensor-parallel slice starting mid-group (head_offset 1): no two of its heads are known to
  // share a block's kv head in every block.
  const cuda::AttentionShape odd_slice{6, 4, 1, 0, {2, 64, 16}};
  EXPECT_EQ(cuda::attention_heads_per_block(odd_slice), 1);
  EXPECT_EQ(grid(1, 8191, odd_slice).heads, 1);
  // head_dim 256: no grouped kernel is built.
  const cuda::AttentionShape wide{8, 4, 0, 0, {2, 256, 16}};
  EXPECT_EQ(cuda::attention_heads_per_block(wide), 1);
  // Every grid keeps G x splits within what a block merges.
  for (int64_t pos : {0, 63, 64, 4095, 100000})
    for (int64_t tokens : {1, 3, 64}) {
      const cuda::AttentionGrid g = grid(tokens, pos);
      EXPECT_LE(g.splits * g.heads, 512) << tokens << " tokens, position " << pos;
      EXPECT_GE(g.splits, 1);
    }
}

TEST(CudaHost, AttentionGridSharesHeadsInEveryStepWhenAsked) {
  ::setenv("SHARDLM_CUDA_ATTENTION_MIN_BLOCKS", "0", 1);
  const cuda::AttentionGrid g = grid(1, 511);
  ::unsetenv("SHARDLM_CUDA_ATTENTION_MIN_BLOCKS");
  EXPECT_EQ(g, (cuda::AttentionGrid{8, 4}));
}
