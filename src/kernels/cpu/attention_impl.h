// Flash-style attention for one task: a tile of up to kRows query rows walks the sequence's KV
// blocks once, keeping a running max, sum and output per row (online softmax), so nothing of
// size (rows x positions) is ever stored and every K/V block is read once per tile. Written as
// plain loops over fixed-size arrays so the compiler vectorizes them for the instruction set of
// the file that includes this (16 keys of a block are one AVX-512 vector).
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "kernels/cpu/attention.h"

namespace shardlm::ops::detail {
namespace ATTENTION_ISA {

constexpr int64_t kRows = 8;
constexpr int64_t kB = kAttentionBlock;

// e^x for x <= 0 (softmax arguments), relative error ~2e-7: 2^(x log2 e) with the exponent split
// into a rounded integer and a fraction in [-0.5, 0.5] whose power comes from a degree-6 series.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float t = x * 1.4426950408889634f;
  const float n = std::nearbyint(t);
  const float f = (t - n) * 0.6931471805599453f;  // in [-0.347, 0.347]
  float p = 1.0f / 720;
  p = p * f + 1.0f / 120;
  p = p * f + 1.0f / 24;
  p = p * f + 1.0f / 6;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  return p * std::bit_cast<float>(int32_t(n + 127) << 23);
}

template <int64_t kDim>  // head_dim known at compile time (0: use shape.head_dim)
void run_task(const AttentionTask& task, const float* q, const float* k_pool, const float* v_pool,
              const AttentionShape& s, float* out) {
  const int64_t D = kDim > 0 ? kDim : s.head_dim;
  const int64_t stride = s.n_kv_heads * D;  // floats between V rows
  const int64_t k_block_floats = s.n_kv_heads * D * kB, v_block_floats = kB * stride;
  const float scale = 1.0f / std::sqrt(float(D));
  const AttentionSegment& seg = *task.segment;
  const int64_t g = task.n_heads_here;

  alignas(64) float qs[kRows][kDim > 0 ? kDim : 256];
  alignas(64) float acc[kRows][kDim > 0 ? kDim : 256];
  alignas(64) float sc[kRows][kB];
  float row_max[kRows], row_sum[kRows];
  int64_t pos[kRows], out_offset[kRows];

  for (int64_t r0 = task.row_begin; r0 < task.row_end; r0 += kRows) {
    const int64_t R = std::min(kRows, task.row_end - r0);
    int64_t last_pos = 0;
    for (int64_t r = 0; r < kRows; ++r) {
      // Unused rows of a short tile repeat the last real one and are not written out.
      const int64_t row = r0 + std::min(r, R - 1);
      const int64_t token = row / g, head = task.heads[row % g];
      pos[r] = seg.start + token;
      out_offset[r] = ((task.first_token + token) * s.n_heads + head) * D;
      const float* qv = q + out_offset[r];
      for (int64_t d = 0; d < D; ++d) qs[r][d] = qv[d] * scale;
      std::fill(acc[r], acc[r] + D, 0.0f);
      row_max[r] = -INFINITY;
      row_sum[r] = 0;
      last_pos = std::max(last_pos, pos[r]);
    }
    const int64_t blocks = last_pos / kB + 1;
    for (int64_t b = 0; b < blocks; ++b) {
      const float* kt = k_pool + seg.table[b] * k_block_floats + task.kv_head * D * kB;  // [D][kB]
      const float* vb = v_pool + seg.table[b] * v_block_floats + task.kv_head * D;      // rows at `stride`
      for (int64_t r = 0; r < kRows; ++r)
        for (int64_t j = 0; j < kB; ++j) sc[r][j] = 0;
      for (int64_t d = 0; d < D; ++d)
        for (int64_t r = 0; r < kRows; ++r) {
          const float qd = qs[r][d];
          for (int64_t j = 0; j < kB; ++j) sc[r][j] += qd * kt[d * kB + j];
        }
      for (int64_t r = 0; r < kRows; ++r) {
        const int64_t valid = std::min<int64_t>(kB, pos[r] - b * kB + 1);  // causal: keys up to pos
        if (valid <= 0) {
          for (int64_t j = 0; j < kB; ++j) sc[r][j] = 0;
          continue;
        }
        float m = row_max[r];
        for (int64_t j = 0; j < valid; ++j) m = std::max(m, sc[r][j]);
        const float rescale = exp_nonpositive(row_max[r] - m);
        row_max[r] = m;
        float sum = 0;
        for (int64_t j = 0; j < kB; ++j) {
          const float p = j < valid ? exp_nonpositive(sc[r][j] - m) : 0.0f;
          sc[r][j] = p;
          sum += p;
        }
        row_sum[r] = row_sum[r] * rescale + sum;
        for (int64_t d = 0; d < D; ++d) acc[r][d] *= rescale;
      }
      const int64_t keys = std::min<int64_t>(kB, last_pos - b * kB + 1);
      for (int64_t j = 0; j < keys; ++j) {
        const float* v = vb + j * stride;
        for (int64_t r = 0; r < kRows; ++r) {
          const float p = sc[r][j];
          for (int64_t d = 0; d < D; ++d) acc[r][d] += p * v[d];
        }
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      const float inv = 1.0f / row_sum[r];
      float* o = out + out_offset[r];
      for (int64_t d = 0; d < D; ++d) o[d] = acc[r][d] * inv;
    }
  }
}

inline void run_any(const AttentionTask& task, const float* q, const float* k_pool, const float* v_pool,
                    const AttentionShape& s, float* out) {
  if (s.head_dim == 64) run_task<64>(task, q, k_pool, v_pool, s, out);
  else if (s.head_dim == 128) run_task<128>(task, q, k_pool, v_pool, s, out);
  else run_task<0>(task, q, k_pool, v_pool, s, out);
}

}  // namespace ATTENTION_ISA
}  // namespace shardlm::ops::detail
