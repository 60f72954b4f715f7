#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/vec.h"

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

void attention(ThreadPool& pool, const float* q, int64_t n_tokens, const int32_t* positions,
               const int32_t* const* tables, const float* k_pool, const float* v_pool, const AttentionShape& s,
               float* out) {
  const float scale = 1.0f / std::sqrt(float(s.head_dim));
  int32_t max_pos = 0;
  for (int64_t t = 0; t < n_tokens; ++t) max_pos = std::max(max_pos, positions[t]);
  const int64_t block_floats = s.block_size * s.position_stride;
  pool.run([&](int tid, int nth) {
    std::vector<float> scores(size_t(max_pos) + 1);
    // Work items are (token, head) pairs, dealt round-robin so causal rows of different lengths
    // spread evenly over the threads.
    for (int64_t item = tid; item < n_tokens * s.n_heads; item += nth) {
      const int64_t t = item / s.n_heads, h = item % s.n_heads;
      const float* qv = q + item * s.head_dim;
      const int64_t kv_offset = ((s.head_offset + h) / s.group - s.kv_head_offset) * s.head_dim;
      const int32_t* table = tables[t];
      const int64_t len = int64_t(positions[t]) + 1;
      auto row = [&](const float* pool_base, int64_t p) {
        return pool_base + table[p / s.block_size] * block_floats + (p % s.block_size) * s.position_stride + kv_offset;
      };
      float max_score = -INFINITY;
      for (int64_t p = 0; p < len; ++p) {
        float sc = vec::dot(qv, row(k_pool, p), s.head_dim) * scale;
        scores[size_t(p)] = sc;
        max_score = std::max(max_score, sc);
      }
      float sum = 0;
      for (int64_t p = 0; p < len; ++p) sum += (scores[size_t(p)] = std::exp(scores[size_t(p)] - max_score));
      float* o = out + item * s.head_dim;
      std::fill(o, o + s.head_dim, 0.0f);
      const float inv = 1.0f / sum;
      for (int64_t p = 0; p < len; ++p) vec::axpy(scores[size_t(p)] * inv, row(v_pool, p), o, s.head_dim);
    }
  });
}

}  // namespace shardlm::ops
