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

// Causal attention of n_tokens queries against the key/value cache. Query t sits at position
// positions[t] and sees cache positions 0..positions[t]. The n_heads local query heads are the
// model's heads head_offset.. ; model head h reads model kv head h / group, which is local kv head
// h / group - kv_head_offset (a tensor-parallel rank holds a contiguous range of each).
// Cache rows are [position][local kv head][head_dim] with `cache_stride` floats between
// positions. out is [n_tokens][n_heads][head_dim].
struct AttentionShape {
  int64_t n_heads, head_dim, cache_stride;
  int64_t group = 1;  // query heads per kv head in the model
  int64_t head_offset = 0, kv_head_offset = 0;
};
void attention(ThreadPool& pool, const float* q, int64_t n_tokens, const int32_t* positions,
               const float* k_cache, const float* v_cache, const AttentionShape& shape, float* out);

}  // namespace shardlm::ops
