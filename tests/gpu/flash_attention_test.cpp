// Flash attention (bf16 tensor cores) against the paged f32 kernel on the same random queries,
// keys and values in a shuffled paged cache: within bf16's rounding of q, k, v and the
// probabilities; and the paged kernel against itself with query heads sharing blocks and the
// context split over blocks. Shapes cover both head sizes, prompts that are not a multiple of the
// 64-row tiles, a chunk after earlier positions (start > 0), grouped kv heads and a
// tensor-parallel rank's slice of heads. Skips where no GPU is visible (CI).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/ops.h"
#include "gpu/gpu_count.h"

using namespace shardlm;
using cuda::DeviceBuffer;

namespace {

struct Case {
  int64_t start, n, n_heads, group, head_dim, head_offset = 0, kv_head_offset = 0;
};

struct Differences {
  double flash = 0;    // largest |flash - paged| with one head a block, no splits (0: no flash kernel)
  double grids = 0;    // largest |paged - that| over the paged kernel's other grids
  double scale = 0;    // largest |paged|
  int grids_run = 0;
};

// The paged kernel with one head a block and no splits against flash attention, and against
// itself with every grid it takes: each divisor of attention_heads_per_block as the heads a
// block takes, with the context in 1, 4, 8 and 16 splits.
Differences max_differences(const Case& c) {
  const int64_t D = c.head_dim, bs = 16, length = c.start + c.n;
  const int64_t n_kv = (c.n_heads + c.group - 1) / c.group, blocks = (length + bs - 1) / bs + 3;
  std::mt19937 rng(unsigned(length * 131 + D));
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  // Queries 4x wider than keys: softmax rows from peaked to flat.
  std::vector<float> q(size_t(c.n * c.n_heads * D)), pool(size_t(blocks * n_kv * bs * D)), v_pool(pool.size());
  for (float& x : q) x = 4 * uniform(rng);
  for (float& x : pool) x = uniform(rng);
  for (float& x : v_pool) x = uniform(rng);
  std::vector<int32_t> table(static_cast<size_t>(blocks));  // the sequence's blocks in a shuffled order
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  std::vector<int32_t> pos(size_t(c.n)), offsets(size_t(c.n), 0);
  std::iota(pos.begin(), pos.end(), int32_t(c.start));

  auto upload = [](const auto& host) {
    DeviceBuffer b(host.size() * sizeof(host[0]));
    EXPECT_EQ(cudaMemcpy(b.get(), host.data(), b.bytes(), cudaMemcpyHostToDevice), cudaSuccess);
    return b;
  };
  auto download = [](const DeviceBuffer& b) {
    std::vector<float> host(b.bytes() / 4);
    EXPECT_EQ(cudaMemcpy(host.data(), b.get(), b.bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  };
  DeviceBuffer dq = upload(q), dk = upload(pool), dv = upload(v_pool), dtable = upload(table), dpos = upload(pos),
               doff = upload(offsets);
  DeviceBuffer out(q.size() * 4), k_half(size_t(n_kv * length * D) * 2), v_half(k_half.bytes()),
      counters(size_t(c.n * c.n_heads) * 4);
  EXPECT_EQ(cudaMemset(counters.get(), 0, counters.bytes()), cudaSuccess);
  const cuda::AttentionShape shape{c.n_heads, c.group, c.head_offset, c.kv_head_offset, {n_kv, D, bs}};
  const bool flash_runs = cuda::flash_attention_supports(D);  // head_dim 64 or 128
  if (flash_runs)
    cuda::flash_attention(dq.get<float>(), dk.get<float>(), dv.get<float>(), dtable.get<int32_t>(), c.start, c.n,
                          shape, k_half.get<uint16_t>(), v_half.get<uint16_t>(), out.get<float>(), nullptr);
  const std::vector<float> flash = flash_runs ? download(out) : std::vector<float>();
  auto paged = [&](cuda::AttentionGrid grid) {
    DeviceBuffer partial(size_t(cuda::attention_partial_floats(c.n, grid, shape)) * 4 + 4);
    cuda::attention(dq.get<float>(), dk.get<float>(), dv.get<float>(), dtable.get<int32_t>(), doff.get<int32_t>(),
                    dpos.get<int32_t>(), c.n, grid, shape, /*past_is_stored=*/false, /*rope=*/nullptr,
                    partial.get<float>(), counters.get<int32_t>(), out.get<float>(), nullptr);
    return download(out);
  };
  const std::vector<float> one = paged({1, 1});
  Differences d;
  for (size_t i = 0; i < q.size(); ++i) {
    if (flash_runs) d.flash = std::max(d.flash, std::fabs(double(flash[i]) - one[i]));
    if (flash_runs && !std::isfinite(flash[i])) d.flash = INFINITY;
    d.scale = std::max(d.scale, std::fabs(double(one[i])));
  }
  const int most = cuda::attention_heads_per_block(shape);
  for (int heads = 1; heads <= most; heads *= 2) {
    for (int64_t splits : {1, 4, 8, 16}) {
      const std::vector<float> other = paged({splits, heads});
      ++d.grids_run;
      for (size_t i = 0; i < q.size(); ++i) {
        d.grids = std::max(d.grids, std::fabs(double(other[i]) - one[i]));
        if (!std::isfinite(other[i])) d.grids = INFINITY;
      }
    }
  }
  return d;
}

}  // namespace

TEST(Cuda, FlashAttentionMatchesThePagedKernel) {
  if (!test::have_gpu()) GTEST_SKIP() << "no CUDA device";
  const Case cases[] = {
      {0, 200, 4, 2, 64},            // a prompt of 3 tiles and a part
      {0, 64, 8, 4, 128},            // one tile, head_dim 128, 4 query heads per kv head
      {0, 70, 16, 8, 64},            // 8 query heads per kv head
      {0, 40, 8, 8, 32},             // head_dim 32 (no flash attention: the paged kernel's grids only)
      {77, 64, 4, 2, 128},           // a chunk after 77 earlier positions
      {300, 130, 6, 3, 64},          // a longer chunk, 3 heads per kv head
      {5, 1000, 2, 1, 128},          // no grouping, 16 tiles
      {40, 100, 2, 2, 64, 2, 1},     // a tensor-parallel rank: model heads 2..3 read its kv head 0 (model's 1)
  };
  for (const Case& c : cases) {
    const Differences d = max_differences(c);
    std::printf("start %lld, %lld tokens, %lld heads / %lld, head_dim %lld: max |flash - paged| %.3g, |paged - paged| "
                "over %d grids %.3g (outputs up to %.3g)\n",
                (long long)c.start, (long long)c.n, (long long)c.n_heads, (long long)c.group, (long long)c.head_dim,
                d.flash, d.grids_run, d.grids, d.scale);
    EXPECT_GT(d.scale, 0.1);
    EXPECT_LT(d.flash, 1e-2 * d.scale);
    EXPECT_LT(d.grids, 1e-5 * d.scale);  // the same f32 sums in another order
  }
}
