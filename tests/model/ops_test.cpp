// Properties of the layer operations, checked against plain double-precision formulas.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec.h"
#include "model/rope.h"

using namespace shardlm;

namespace {
std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
}  // namespace

TEST(Ops, VecPrimitivesMatchScalarAtEveryLength) {
  for (int64_t n = 0; n < 80; ++n) {
    auto a = randn(size_t(n), 1), b = randn(size_t(n), 2);
    double ref = 0;
    for (int64_t i = 0; i < n; ++i) ref += double(a[size_t(i)]) * b[size_t(i)];
    EXPECT_NEAR(vec::dot(a.data(), b.data(), n), ref, 1e-4) << n;
    auto y = b;
    vec::axpy(0.5f, a.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(y[size_t(i)], b[size_t(i)] + 0.5f * a[size_t(i)]);
  }
}

TEST(Ops, RmsNormMatchesFormula) {
  auto x = randn(3 * 40, 3), w = randn(40, 4);
  std::vector<float> y(x.size());
  ops::rmsnorm(x.data(), w.data(), y.data(), 3, 40, 1e-5f);
  for (int t = 0; t < 3; ++t) {
    double ss = 0;
    for (int i = 0; i < 40; ++i) ss += double(x[size_t(t * 40 + i)]) * x[size_t(t * 40 + i)];
    double scale = 1 / std::sqrt(ss / 40 + 1e-5);
    for (int i = 0; i < 40; ++i) EXPECT_NEAR(y[size_t(t * 40 + i)], w[size_t(i)] * x[size_t(t * 40 + i)] * scale, 1e-5);
  }
}

TEST(Ops, RopeDependsOnlyOnRelativePosition) {
  ModelConfig c;
  c.head_dim = 64, c.rope_theta = 10000;
  auto inv = rope_inverse_frequencies(c);
  for (bool adjacent : {false, true}) {
    auto q = randn(64, 5), k = randn(64, 6);
    auto rotated_dot = [&](int32_t pq, int32_t pk) {
      auto a = q, b = k;
      ops::rope(a.data(), 1, 1, 64, &pq, inv.data(), adjacent);
      ops::rope(b.data(), 1, 1, 64, &pk, inv.data(), adjacent);
      // Rotation keeps the norm.
      EXPECT_NEAR(vec::dot(a.data(), a.data(), 64), vec::dot(q.data(), q.data(), 64), 1e-3);
      return vec::dot(a.data(), b.data(), 64);
    };
    EXPECT_NEAR(rotated_dot(10, 3), rotated_dot(107, 100), 1e-3);
    EXPECT_NEAR(rotated_dot(0, 0), vec::dot(q.data(), k.data(), 64), 1e-4);
  }
}

TEST(Ops, RopeAdjacentPairsEqualHalvesUnderPermutation) {
  // GGUF llama files store Q/K rows permuted so that rotating adjacent pairs equals
  // Hugging Face's rotation of halves: element i <-> 2i, i + d/2 <-> 2i + 1.
  ModelConfig c;
  c.head_dim = 16, c.rope_theta = 500000;
  auto inv = rope_inverse_frequencies(c);
  auto x = randn(16, 7);
  std::vector<float> perm(16);
  for (int i = 0; i < 8; ++i) perm[size_t(2 * i)] = x[size_t(i)], perm[size_t(2 * i + 1)] = x[size_t(i + 8)];
  int32_t pos = 37;
  ops::rope(x.data(), 1, 1, 16, &pos, inv.data(), false);
  ops::rope(perm.data(), 1, 1, 16, &pos, inv.data(), true);
  for (int i = 0; i < 8; ++i) {
    EXPECT_FLOAT_EQ(perm[size_t(2 * i)], x[size_t(i)]);
    EXPECT_FLOAT_EQ(perm[size_t(2 * i + 1)], x[size_t(i + 8)]);
  }
}

TEST(Ops, Llama3ScalingKeepsHighFrequenciesAndSlowsLowOnes) {
  ModelConfig c;
  c.head_dim = 64, c.rope_theta = 500000;
  auto plain = rope_inverse_frequencies(c);
  c.rope_scaling = RopeScaling{"llama3", 32.0, 1.0, 4.0, 8192};
  auto scaled = rope_inverse_frequencies(c);
  EXPECT_FLOAT_EQ(scaled[0], plain[0]);                 // wavelength 2*pi < 2048: unchanged
  EXPECT_FLOAT_EQ(scaled[31], plain[31] / 32.0f);       // longest wavelengths divided by factor
  for (size_t i = 0; i < 32; ++i) EXPECT_LE(scaled[i], plain[i] * 1.0000001f);
}

TEST(Ops, AttentionOverPagedCacheMatchesNaiveCausalSoftmax) {
  // Two sequences in one batch, their positions scattered over the blocks of a pool, head sizes
  // of the fast paths (64) and the generic one (40), GQA groups of 2 and a tensor-parallel rank
  // whose heads start mid-model.
  for (int64_t D : {int64_t(64), int64_t(40)}) {
    SCOPED_TRACE(D);
    const int64_t B = ops::kAttentionBlock, KV = 2, H = 3, n_blocks = 8, group = 2, head_offset = 1;
    // Sequence a: 40 positions in blocks 5, 1, 6; sequence b: 20 positions in blocks 0, 7.
    const std::vector<int32_t> table_a = {5, 1, 6}, table_b = {0, 7};
    const int64_t len_a = 40, len_b = 20;
    std::vector<float> k_pool(size_t(n_blocks * B * KV * D)), v_pool(k_pool.size());
    auto keys_a = randn(size_t(len_a * KV * D), 9), vals_a = randn(keys_a.size(), 10);
    auto keys_b = randn(size_t(len_b * KV * D), 11), vals_b = randn(keys_b.size(), 12);
    auto fill = [&](const std::vector<int32_t>& table, int64_t len, const std::vector<float>& k, const std::vector<float>& v) {
      for (int64_t p = 0; p < len; ++p) {
        const int64_t off = table[size_t(p / B)] * B * KV * D;
        ops::store_kv(k_pool.data() + off, v_pool.data() + off, p % B, k.data() + p * KV * D, v.data() + p * KV * D, KV, D);
      }
    };
    fill(table_a, len_a, keys_a, vals_a);
    fill(table_b, len_b, keys_b, vals_b);
    // The batch: a's positions 21..39 (a prefill chunk after a cached prefix), then b's position 19.
    const std::vector<ops::AttentionSegment> segs = {{table_a.data(), 21, 19}, {table_b.data(), 19, 1}};
    const int64_t T = 20;
    auto q = randn(size_t(T * H * D), 8);
    std::vector<float> out(q.size());
    ThreadPool pool(2);
    // Model heads 1..3 of kv heads 0..1 (group 2): local heads 0 -> kv 0, 1 and 2 -> kv 1.
    ops::attention(pool, q.data(), segs.data(), 2, k_pool.data(), v_pool.data(), {H, KV, D, group, head_offset, 0},
                   out.data());
    for (int64_t t = 0; t < T; ++t) {
      const bool in_a = t < 19;
      const int64_t pos = in_a ? 21 + t : 19;
      const auto& keys = in_a ? keys_a : keys_b;
      const auto& vals = in_a ? vals_a : vals_b;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t g = (head_offset + h) / group;
        std::vector<double> sc(size_t(pos) + 1);
        double mx = -1e30, sum = 0;
        for (int64_t p = 0; p <= pos; ++p) {
          double d = 0;
          for (int64_t i = 0; i < D; ++i) d += double(q[size_t((t * H + h) * D + i)]) * keys[size_t((p * KV + g) * D + i)];
          sc[size_t(p)] = d / std::sqrt(double(D));
          mx = std::max(mx, sc[size_t(p)]);
        }
        for (auto& x : sc) sum += (x = std::exp(x - mx));
        for (int64_t i = 0; i < D; ++i) {
          double o = 0;
          for (int64_t p = 0; p <= pos; ++p) o += sc[size_t(p)] / sum * vals[size_t((p * KV + g) * D + i)];
          ASSERT_NEAR(out[size_t((t * H + h) * D + i)], o, 2e-5) << "token " << t << " head " << h;
        }
      }
    }
  }
}
