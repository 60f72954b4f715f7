// The non-matmul operations of a Llama-family layer, on f32 activations laid out
// [tokens][features]. Each is a few lines; attention is threaded over (token, head).
#pragma once
#include <cstdint>

#include "core/thread_pool.h"

namespace shardlm::ops {

// y[t] = x[t] / rms(x[t]) * weight, for each of n rows of `dim` (y may alias x).
void rmsnorm(const float* x, const float* weight, float* y, int64_t n, int64_t dim, float eps);

// Rotates each head of x [n_tokens][n_heads][head_dim] by its token's position.
// adjacent_pairs=false rotates (i, i+head_dim/2) as Hugging Face does; true rotates (2i, 2i+1)
// as GGUF files of arch llama expect.
void rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq, bool adjacent_pairs);

// out = silu(gate) * up, elementwise.
void swiglu(const float* gate, const float* up, float* out, int64_t n);

// Causal attention of n_tokens queries, each against the cached keys/values of its own sequence
// (a batch mixes sequences). Query t sits at position positions[t] and sees positions
// 0..positions[t] of its sequence, whose cache is paged: position p lives in block
// tables[t][p / block_size], row p % block_size, of the layer's pools k_pool / v_pool
// ([block][row][local kv head][head_dim], position_stride floats per row).
// The n_heads local query heads are the model's heads head_offset.. ; model head h reads model kv
// head h / group, which is local kv head h / group - kv_head_offset (a tensor-parallel rank holds a
// contiguous range of each). out is [n_tokens][n_heads][head_dim].
struct AttentionShape {
  int64_t n_heads, head_dim;
  int64_t group = 1;  // query heads per kv head in the model
  int64_t head_offset = 0, kv_head_offset = 0;
  int64_t block_size = 16, position_stride = 0;
};
void attention(ThreadPool& pool, const float* q, int64_t n_tokens, const int32_t* positions,
               const int32_t* const* tables, const float* k_pool, const float* v_pool, const AttentionShape& shape,
               float* out);

}  // namespace shardlm::ops
