// Flash attention (bf16 tensor cores) against the paged f32 kernel on the same random queries,
// keys and values in a shuffled paged cache: within bf16's rounding of q, k, v and the
// probabilities. Shapes cover both head sizes, prompts that are not a multiple of the 64-row
// tiles, a chunk after earlier positions (start > 0), grouped kv heads and a tensor-parallel
// rank's slice of heads. Skips where no GPU is visible (CI).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/ops.h"

using namespace shardlm;
using cuda::DeviceBuffer;

namespace {

struct Case {
  int64_t start, n, n_heads, group, head_dim, head_offset = 0, kv_head_offset = 0;
};

// Largest |flash - paged| over every output of the case, and the largest |paged| (the scale).
std::pair<double, double> max_difference(const Case& c) {
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
  DeviceBuffer dq = upload(q), dk = upload(pool), dv = upload(v_pool), dtable = upload(table), dpos = upload(pos),
               doff = upload(offsets);
  DeviceBuffer flash_out(q.size() * 4), paged_out(q.size() * 4), k_half(size_t(n_kv * length * D) * 2),
      v_half(k_half.bytes()), counters(size_t(c.n * c.n_heads) * 4);
  const cuda::AttentionShape shape{c.n_heads, c.group, c.head_offset, c.kv_head_offset, {n_kv, D, bs}};
  cuda::flash_attention(dq.get<float>(), dk.get<float>(), dv.get<float>(), dtable.get<int32_t>(), c.start, c.n, shape,
                        k_half.get<uint16_t>(), v_half.get<uint16_t>(), flash_out.get<float>(), nullptr);
  cuda::attention(dq.get<float>(), dk.get<float>(), dv.get<float>(), dtable.get<int32_t>(), doff.get<int32_t>(),
                  dpos.get<int32_t>(), c.n, /*splits=*/1, shape, /*past_is_stored=*/false, /*rope=*/nullptr, nullptr, counters.get<int32_t>(),
                  paged_out.get<float>(), nullptr);
  std::vector<float> flash(q.size()), paged(q.size());
  EXPECT_EQ(cudaMemcpy(flash.data(), flash_out.get(), flash_out.bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(paged.data(), paged_out.get(), paged_out.bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
  double diff = 0, scale = 0;
  for (size_t i = 0; i < q.size(); ++i) {
    diff = std::max(diff, std::fabs(double(flash[i]) - paged[i]));
    if (!std::isfinite(flash[i])) diff = INFINITY;
    scale = std::max(scale, std::fabs(double(paged[i])));
  }
  return {diff, scale};
}

}  // namespace

TEST(Cuda, FlashAttentionMatchesThePagedKernel) {
  if (::access("/dev/nvidia0", F_OK) != 0) GTEST_SKIP() << "no CUDA device";
  const Case cases[] = {
      {0, 200, 4, 2, 64},            // a prompt of 3 tiles and a part
      {0, 64, 8, 4, 128},            // one tile, head_dim 128, 4 query heads per kv head
      {77, 64, 4, 2, 128},           // a chunk after 77 earlier positions
      {300, 130, 6, 3, 64},          // a longer chunk, 3 heads per kv head
      {5, 1000, 2, 1, 128},          // no grouping, 16 tiles
      {40, 100, 2, 2, 64, 2, 1},     // a tensor-parallel rank: model heads 2..3 read its kv head 0 (model's 1)
  };
  for (const Case& c : cases) {
    const auto [diff, scale] = max_difference(c);
    std::printf("start %lld, %lld tokens, %lld heads / %lld, head_dim %lld: max |flash - paged| %.3g (outputs up to %.3g)\n",
                (long long)c.start, (long long)c.n, (long long)c.n_heads, (long long)c.group, (long long)c.head_dim, diff,
                scale);
    EXPECT_GT(scale, 0.1);
    EXPECT_LT(diff, 1e-2 * scale);
  }
}
