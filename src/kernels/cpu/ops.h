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

// Index of the largest of n values; the lowest index wins a tie (greedy decoding).
int32_t argmax(const float* x, int64_t n);

// Causal attention over a paged KV cache, for a batch of segments (runs of consecutive tokens of
// one sequence each). Token i of a segment sits at position start + i and sees positions
// 0..start+i of its sequence. Position p of a sequence lives in block table[p / kBlock] of the
// layer's pools, which are laid out for the kernel:
//   K: block b = [local kv head][head_dim][kBlock]   (transposed: 16 keys are one vector)
//   V: block b = [kBlock][local kv head][head_dim]
// The n_heads local query heads are the model's heads head_offset.. ; model head h reads model
// kv head h / group, which is local kv head h / group - kv_head_offset (a tensor-parallel rank
// holds a contiguous range of each). q and out are [tokens][n_heads][head_dim], the segments'
// tokens in order.
constexpr int64_t kAttentionBlock = 16;
struct AttentionShape {
  int64_t n_heads, n_kv_heads, head_dim;
  int64_t group = 1;  // query heads per kv head in the model
  int64_t head_offset = 0, kv_head_offset = 0;
};
struct AttentionSegment {
  const int32_t* table;  // the sequence's block ids
  int64_t start, n_tokens;
};
void attention(ThreadPool& pool, const float* q, const AttentionSegment* segments, int64_t n_segments,
               const float* k_pool, const float* v_pool, const AttentionShape& shape, float* out);

// Writes one position's K and V ([n_kv_heads][head_dim] each) into its block in the layout above.
void store_kv(float* k_block, float* v_block, int64_t row, const float* k, const float* v, int64_t n_kv_heads,
              int64_t head_dim);

}  // namespace shardlm::ops
