// Causal attention over the paged KV cache: one block of 8 warps per (query token, head, split of
// the token's context). Each warp takes 8 positions at a time (head_dim 128): every lane loads
// D/32 dimensions of the key rows and the value rows (a warp reads whole 128-byte rows:
// coalesced), the warp sums the dot products with shuffles, and keeps its own online softmax; the
// warps then merge theirs. With several splits (flash-decoding: a decode step has one token, so
// splitting the context puts every SM to work) each block writes (max, sum, weighted values) and
// the last block of a (token, head) to finish merges them: no second launch. In a decode step
// (one token per sequence) the first round's keys and values, stored by earlier steps, are loaded
// before the wait for the kernel before, and the kernel also does that step's RoPE and KV store
// (ops.h): the step needs no RoPE launch. Long prompt chunks take flash_attention.cu instead.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/overlap.cuh"

namespace shardlm::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kMaxHeadDim = 256;
constexpr int kMaxSplits = 512;  // attention_splits aims at 512 blocks in all

// Positions a warp takes per iteration: as many key and value rows in flight as 64 registers a
// lane hold (8 for head_dim 128), so that a block's whole span of a decode step's context
// (kWarps x kUnroll = 64 positions) is one round trip to memory; at most 8 (smaller heads would
// take 16 or 32 and spill registers under two blocks per SM).
template <int kDims>
constexpr int kUnroll = 32 / kDims < 2 ? 2 : 32 / kDims > 8 ? 8 : 32 / kDims;

// A decode step's RoPE done by the attention (ops.h): this lane's dimensions d = lane + 32 i of a
// head, RMS-normalized by `norm` when given (Qwen3), then rotated with the sines and cosines of
// their pairs, as rope_and_store_kernel computes them. Half-split pairs (d, d + D / 2) lie in one
// lane (i and i + kDims / 2, kDims even); adjacent ones (d, d ^ 1) in neighbouring lanes.
template <int kDims>
__device__ __forceinline__ void normalize_and_rotate(float (&x)[kDims], const float* norm, float eps,
                                                     const float (&sin)[kDims], const float (&cos)[kDims],
                                                     bool adjacent) {
  const int lane = threadIdx.x % 32;
  if (norm) {
    float sum = 0;
#pragma unroll
    for (int i = 0; i < kDims; ++i) sum += x[i] * x[i];
    for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float scale = 1.0f / sqrtf(sum / float(32 * kDims) + eps);
#pragma unroll
    for (int i = 0; i < kDims; ++i) x[i] = norm[lane + 32 * i] * (x[i] * scale);
  }
  float y[kDims];
#pragma unroll
  for (int i = 0; i < kDims; ++i) {
    const float partner = adjacent ? __shfl_xor_sync(0xffffffffu, x[i], 1) : x[(i + kDims / 2) % kDims];
    const bool first = adjacent ? lane % 2 == 0 : i < kDims / 2;
    y[i] = first ? x[i] * cos[i] - partner * sin[i] : x[i] * cos[i] + partner * sin[i];
  }
#pragma unroll
  for (int i = 0; i < kDims; ++i) x[i] = y[i];
}

template <int kDims>  // head_dim / 32: dimensions per lane
__global__ void __launch_bounds__(32 * kWarps, 2) attention_kernel(const float* q, const float* k_pool,
                                                                 const float* v_pool, const int32_t* tables,
                                                                 const int32_t* table_offset, const int32_t* pos,
                                                                 AttentionShape shape, float scale,
                                                                 bool past_is_stored, RopeStep rope, float* out,
                                                                 float* partial, int32_t* done) {
  detail::let_next_start();
  constexpr int D = kDims * 32, U = kUnroll<kDims>;
  const int64_t t = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t bs = shape.kv.block_size, n_kv = shape.kv.n_kv_heads;
  const int64_t kv = (shape.head_offset + h) / shape.group - shape.kv_head_offset;
  const int32_t* table = tables + table_offset[t];
  // This split's share of the token's positions 0..pos[t].
  const int64_t length = int64_t(pos[t]) + 1, round = kWarps * U, span = (length + gridDim.z - 1) / gridDim.z;
  const int64_t first = split * span, last = min(length, first + span) - 1;
  auto row_of = [&](int64_t p) { return ((int64_t(table[p / bs]) * n_kv + kv) * bs + p % bs) * D + lane; };

  // With RoPE fused (a decode step): the rotation at the token's position, before the wait.
  const bool fused = rope.inv_freq != nullptr;
  float sin[kDims], cos[kDims];
  if (fused) {
#pragma unroll
    for (int i = 0; i < kDims; ++i) {
      const int64_t d = lane + 32 * i, f = rope.adjacent_pairs ? d / 2 : d % (D / 2);
      sincosf(float(length - 1) * rope.inv_freq[f], &sin[i], &cos[i]);  // f32 product, as on the CPU
    }
  }
  // The token's own position: with RoPE fused, the warp whose rounds reach it takes its key and
  // value from the products (kc, vc) instead of the cache, which it is not in yet.
  const int64_t cur = length - 1;
  const int64_t c0 = first + warp * U;
  const bool has_current = fused && cur >= c0 && cur <= last && (cur - c0) % round < U;
  float kr[U][kDims], vr[U][kDims], kc[kDims], vc[kDims];
  auto load_row = [&](int64_t p, int u) {
    if (fused && p == cur) return;
    const int64_t at = row_of(p);
#pragma unroll
    for (int i = 0; i < kDims; ++i) kr[u][i] = k_pool[at + 32 * i], vr[u][i] = v_pool[at + 32 * i];
  };
  // The step's inputs (positions, block tables) were copied before its first kernel, and with
  // past_is_stored the positions before each token's own were stored by earlier steps: the first
  // round's rows of those are loaded while the kernel before (which stores this step's keys and
  // values, and q) still runs.
  const int64_t early_end = past_is_stored ? length - 1 : first;
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (c0 + u <= last && c0 + u < early_end) load_row(c0 + u, u);
  detail::wait_for_previous();
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (c0 + u <= last && c0 + u >= early_end) load_row(c0 + u, u);
  if (has_current) {
    const int64_t from = (t * n_kv + kv) * D + lane;
#pragma unroll
    for (int i = 0; i < kDims; ++i) kc[i] = rope.k[from + 32 * i], vc[i] = rope.v[from + 32 * i];
    normalize_and_rotate(kc, rope.k_norm, rope.eps, sin, cos, rope.adjacent_pairs);
    // The first local query head of the kv head stores them: one block per token and kv head.
    if (h == 0 || (shape.head_offset + h) % shape.group == 0) {
      const int64_t at = row_of(cur);
#pragma unroll
      for (int i = 0; i < kDims; ++i) rope.k_pool[at + 32 * i] = kc[i], rope.v_pool[at + 32 * i] = vc[i];
    }
  }
  float qv[kDims], acc[kDims];
  const float* qh = q + (t * shape.n_heads + h) * D + lane;
#pragma unroll
  for (int i = 0; i < kDims; ++i) qv[i] = qh[32 * i], acc[i] = 0;
  if (fused) normalize_and_rotate(qv, rope.q_norm, rope.eps, sin, cos, rope.adjacent_pairs);
#pragma unroll
  for (int i = 0; i < kDims; ++i) qv[i] *= scale;
  float m = -INFINITY, l = 0;
  for (int64_t c = c0; c <= last; c += round) {
    float s[U];
    if (c != c0) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (c + u > last) break;
        load_row(c + u, u);
      }
    }
    if (has_current && cur - c < U) {  // the token's own row, in its slot of this round
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (c + u == cur)
#pragma unroll
          for (int i = 0; i < kDims; ++i) kr[u][i] = kc[i], vr[u][i] = vc[i];
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float dot = 0;
#pragma unroll
      for (int i = 0; i < kDims; ++i) dot += qv[i] * (c + u <= last ? kr[u][i] : 0.0f);
      for (int o = 16; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      s[u] = c + u <= last ? dot : -INFINITY;
    }
    float m_new = m;
#pragma unroll
    for (int u = 0; u < U; ++u) m_new = fmaxf(m_new, s[u]);
    const float correction = expf(m - m_new);  // 0 on the first chunk (m = -inf)
    l *= correction;
#pragma unroll
    for (int i = 0; i < kDims; ++i) acc[i] *= correction;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (c + u > last) break;
      const float p = expf(s[u] - m_new);
      l += p;
#pragma unroll
      for (int i = 0; i < kDims; ++i) acc[i] += p * vr[u][i];
    }
    m = m_new;
  }
  // Merge the warps: M = max of their maxima; num = sum acc_w e^(m_w - M), den = sum l_w e^(m_w - M).
  __shared__ float sm[kWarps], sl[kWarps], sacc[kWarps][D];
  if (lane == 0) sm[warp] = m, sl[warp] = l;
#pragma unroll
  for (int i = 0; i < kDims; ++i) sacc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w]);
  float den = 0, weight[kWarps];
  for (int w = 0; w < kWarps; ++w) {
    weight[w] = sl[w] > 0 ? expf(sm[w] - M) : 0.0f;  // a warp with no positions adds nothing
    den += sl[w] * weight[w];
  }
  const int64_t row = t * shape.n_heads + h;
  if (gridDim.z == 1) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      float num = 0;
      for (int w = 0; w < kWarps; ++w) num += sacc[w][d] * weight[w];
      out[row * D + d] = num / den;
    }
    return;
  }
  // Several splits: each writes (max, sum, weighted values); the last of a row to finish merges
  // them (out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M)) and sets the row's count back to 0.
  float* rows = partial + row * gridDim.z * (D + 2);  // [split][m, l, acc[D]]
  float* mine = rows + split * (D + 2);
  if (threadIdx.x == 0) mine[0] = M, mine[1] = den;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float num = 0;
    for (int w = 0; w < kWarps; ++w) num += sacc[w][d] * weight[w];
    mine[2 + d] = num;
  }
  __threadfence();  // this split's results are visible before it is counted
  __syncthreads();
  __shared__ bool last_split;
  if (threadIdx.x == 0) last_split = atomicAdd(done + row, 1) == int(gridDim.z) - 1;
  __syncthreads();
  if (!last_split) return;
  __threadfence();
  if (threadIdx.x == 0) done[row] = 0;
  // Every split's (max, sum) at once, a thread each, then each thread's values of all splits with
  // 8 loads in flight: the merge waits on L2 a few times, not twice per split (a third of a decode
  // step's attention at 512 tokens of context, 8 splits, before).
  __shared__ float split_max[kMaxSplits], split_sum[kMaxSplits];
  const int splits = int(gridDim.z);
  for (int sp = threadIdx.x; sp < splits; sp += blockDim.x)
    split_max[sp] = __ldcg(rows + sp * (D + 2)), split_sum[sp] = __ldcg(rows + sp * (D + 2) + 1);
  __syncthreads();
  float all_max = -INFINITY;
  for (int sp = 0; sp < splits; ++sp) all_max = fmaxf(all_max, split_max[sp]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float num = 0, total = 0;
#pragma unroll 8
    for (int sp = 0; sp < splits; ++sp) {
      // A split past this token's last position has sum 0 and values 0: weight 0.
      const float w = split_sum[sp] > 0 ? expf(split_max[sp] - all_max) : 0.0f;
      num += __ldcg(rows + sp * (D + 2) + 2 + d) * w;
      total += split_sum[sp] * w;
    }
    out[row * D + d] = num / total;
  }
}

}  // namespace

bool attention_can_rope(int64_t head_dim, bool adjacent_pairs) {
  return head_dim % 32 == 0 && head_dim <= kMaxHeadDim && (adjacent_pairs || head_dim % 64 == 0);
}

int64_t attention_splits(int64_t n_tokens, int64_t max_pos, const AttentionShape& shape) {
  // Split the context when (token, head) blocks alone would leave most SMs idle: aim for about
  // 512 blocks, each over at least 64 positions (one round of its warps). A power of two, so that
  // a captured decode step stays valid for long stretches of positions. (Finer splits measured
  // slower: more blocks, more partial results to merge. 1024 blocks instead of 512 gave the same
  // speed after 512 tokens and 10% (1b) and 6% (8b) less after 4K tokens, on one H200.)
  constexpr int64_t kMinSpan = 64, kTargetBlocks = 512;
  const int64_t rows = std::max<int64_t>(1, n_tokens * shape.n_heads), length = max_pos + 1;
  const int64_t want = std::min((length + kMinSpan - 1) / kMinSpan, std::max<int64_t>(1, kTargetBlocks / rows));
  int64_t splits = 1;
  while (splits * 2 <= want) splits *= 2;
  return splits;
}

int64_t attention_partial_floats(int64_t n_tokens, int64_t splits, const AttentionShape& shape) {
  return splits > 1 ? n_tokens * shape.n_heads * splits * (shape.kv.head_dim + 2) : 0;
}

void attention(const float* q, const float* k_pool, const float* v_pool, const int32_t* tables,
               const int32_t* table_offset, const int32_t* pos, int64_t n_tokens, int64_t splits, AttentionShape shape,
               bool past_is_stored, const RopeStep* rope, float* partial, int32_t* counters, float* out, Stream s) {
  if (n_tokens == 0 || shape.n_heads == 0) return;
  if (rope && (rope->q_in || rope->in_stride ||
               !(past_is_stored && attention_can_rope(shape.kv.head_dim, rope->adjacent_pairs))))
    detail::fail_with("CUDA attention: RoPE fused into a step that is not a decode step, of an odd head split or of "
                      "q, k and v not packed");
  const int64_t D = shape.kv.head_dim;
  if (D % 32 != 0 || D > kMaxHeadDim) {
    char why[112];
    std::snprintf(why, sizeof why, "CUDA attention: head_dim %lld is not a multiple of 32 up to %d", (long long)D,
                  kMaxHeadDim);
    detail::fail_with(why);
  }
  if (splits < 1 || splits > kMaxSplits) detail::fail_with("CUDA attention: splits of the context outside 1..512");
  const float scale = 1.0f / std::sqrt(float(D));
  const dim3 grid(unsigned(n_tokens), unsigned(shape.n_heads), unsigned(splits));
  using Kernel = void (*)(const float*, const float*, const float*, const int32_t*, const int32_t*, const int32_t*,
                          AttentionShape, float, bool, RopeStep, float*, float*, int32_t*);
  constexpr Kernel kernels[] = {attention_kernel<1>, attention_kernel<2>, attention_kernel<3>, attention_kernel<4>,
                                attention_kernel<5>, attention_kernel<6>, attention_kernel<7>, attention_kernel<8>};
  detail::launch_overlapping("attention", kernels[D / 32 - 1], grid, 32 * kWarps, s, q, k_pool, v_pool, tables,
                             table_offset, pos, shape, scale, past_is_stored, rope ? *rope : RopeStep{}, out, partial,
                             counters);
}

}  // namespace shardlm::cuda
