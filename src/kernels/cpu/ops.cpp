#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/cpu_features.h"
#include "core/error.h"
#include "kernels/cpu/vec.h"
#include "kernels/cpu/attention.h"

namespace shardlm::ops {

void rmsnorm(const float* x, const float* weight, float* y, int64_t n, int64_t dim, float eps) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * dim;
    float* yr = y + t * dim;
    float scale = 1.0f / std::sqrt(vec::sum_squares(xr, dim) / float(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * scale);
  }
}

void rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq, bool adjacent_pairs) {
  const int64_t half = head_dim / 2;
  std::vector<float> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      float angle = float(positions[t]) * inv_freq[i];  // f32 product, as transformers computes it
      cos_t[size_t(i)] = std::cos(angle);
      sin_t[size_t(i)] = std::sin(angle);
    }
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        int64_t a = adjacent_pairs ? 2 * i : i;
        int64_t b = adjacent_pairs ? 2 * i + 1 : i + half;
        float x0 = v[a], x1 = v[b], c = cos_t[size_t(i)], s = sin_t[size_t(i)];
        v[a] = x0 * c - x1 * s;
        v[b] = x1 * c + x0 * s;
      }
    }
  }
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

void attention(ThreadPool& pool, const float* q, const AttentionSegment* segments, int64_t n_segments,
               const float* k_pool, const float* v_pool, const AttentionShape& s, float* out) {
  SHARDLM_CHECK(s.head_dim > 0 && s.head_dim <= 256, "attention: head_dim {} is not supported (at most 256)", s.head_dim);
  static const detail::AttentionKernel kernel = [] {
    switch (simd_level()) {
      case SimdLevel::Avx512: return detail::attention_kernel_avx512();
      case SimdLevel::Avx2: return detail::attention_kernel_avx2();
      default: return detail::attention_kernel_scalar();
    }
  }();
  // The local query heads of each local kv head.
  std::vector<std::vector<int64_t>> heads_of(size_t(s.n_kv_heads));
  for (int64_t h = 0; h < s.n_heads; ++h) {
    const int64_t kv = (s.head_offset + h) / s.group - s.kv_head_offset;
    SHARDLM_CHECK(kv >= 0 && kv < s.n_kv_heads, "attention: head {} maps to kv head {} outside [0, {})", h, kv, s.n_kv_heads);
    heads_of[size_t(kv)].push_back(h);
  }
  // Tasks of at most 64 rows, so long prefill chunks spread over every thread.
  constexpr int64_t kTaskRows = 64;
  std::vector<detail::AttentionTask> tasks;
  int64_t first_token = 0;
  for (int64_t i = 0; i < n_segments; ++i) {
    const AttentionSegment& seg = segments[i];
    for (int64_t kv = 0; kv < s.n_kv_heads; ++kv) {
      const auto& heads = heads_of[size_t(kv)];
      const int64_t rows = seg.n_tokens * int64_t(heads.size());
      for (int64_t r = 0; r < rows; r += kTaskRows)
        tasks.push_back({&seg, first_token, kv, heads.data(), int64_t(heads.size()), r, std::min(rows, r + kTaskRows)});
    }
    first_token += seg.n_tokens;
  }
  // Later rows see more positions: deal the tasks from the longest down, round-robin.
  std::reverse(tasks.begin(), tasks.end());
  pool.run([&](int t, int nt) {
    for (size_t i = size_t(t); i < tasks.size(); i += size_t(nt)) kernel(tasks[i], q, k_pool, v_pool, s, out);
  });
}

void store_kv(float* k_block, float* v_block, int64_t row, const float* k, const float* v, int64_t n_kv_heads,
              int64_t head_dim) {
  for (int64_t h = 0; h < n_kv_heads; ++h)
    for (int64_t d = 0; d < head_dim; ++d) k_block[(h * head_dim + d) * kAttentionBlock + row] = k[h * head_dim + d];
  std::copy(v, v + n_kv_heads * head_dim, v_block + row * n_kv_heads * head_dim);
}

}  // namespace shardlm::ops
