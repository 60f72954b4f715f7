// Causal attention over the paged KV cache: one block of 8 warps per (query token, query heads of
// one kv head, split of the token's context): the heads that share a kv head (grouped-query
// attention) share the block's reads of its keys and values. Each warp takes 8 positions at a time
// (head_dim 128): every lane loads D/32 dimensions of the key rows and the value rows (a warp reads
// whole 128-byte rows: coalesced), the warp sums the dot products with shuffles, and keeps its own
// online softmax per head; the warps then merge theirs. With several splits (flash-decoding: a decode step has one token, so
// splitting the context puts every SM to work) each block writes (max, sum, weighted values) and
// the last block of a (token, heads) to finish merges them: no second launch. In a decode step
// (one token per sequence) the first round's keys and values, stored by earlier steps, are loaded
// before the wait for the kernel before, and the kernel also does that step's RoPE and KV store
// (ops.h): the step needs no RoPE launch. Long prompt chunks take flash_attention.cu instead.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/overlap.cuh"

namespace shardlm::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kMaxHeadDim = 256;
constexpr int kMaxSplits = 512;  // G x splits of a (token, heads): attention_grid keeps within

// Positions a warp takes per iteration: as many key and value rows in flight as 64 registers a
// lane hold (8 for head_dim 128), so that a block's whole span of a decode step's context
// (kWarps x kUnroll = 64 positions) is one round trip to memory; at most 8 (smaller heads would
// take 16 or 32 and spill registers under two blocks per SM).
// With G > 1 query heads a block, fewer: their q and sums take registers too (head_dim 128 with
// two heads spilled at 8, head_dim 64 with eight at 8); a round is then 32 positions.
template <int kDims, int G>
constexpr int kUnroll = std::clamp((G == 1 ? 32 : G <= 4 ? 16 : 8) / kDims, 2, 8);

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

template <int kDims, int G>  // head_dim / 32: dimensions per lane; G query heads of one kv head
__global__ void __launch_bounds__(32 * kWarps, 2) attention_kernel(const float* q, const float* k_pool,
                                                                 const float* v_pool, const int32_t* tables,
                                                                 const int32_t* table_offset, const int32_t* pos,
                                                                 AttentionShape shape, float scale,
                                                                 bool past_is_stored, RopeStep rope, float* out,
                                                                 float* partial, int32_t* done) {
  detail::let_next_start();
  constexpr int D = kDims * 32, U = kUnroll<kDims, G>;
  const int64_t t = blockIdx.x, h0 = blockIdx.y * G, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t bs = shape.kv.block_size, n_kv = shape.kv.n_kv_heads;
  const int64_t kv = (shape.head_offset + h0) / shape.group - shape.kv_head_offset;
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
    // The block of the kv head's first local query head stores them: one per token and kv head.
    if (h0 == 0 || (shape.head_offset + h0) % shape.group == 0) {
      const int64_t at = row_of(cur);
#pragma unroll
      for (int i = 0; i < kDims; ++i) rope.k_pool[at + 32 * i] = kc[i], rope.v_pool[at + 32 * i] = vc[i];
    }
  }
  // The G query heads: each with its own online softmax over the same keys and values.
  float qv[G][kDims], acc[G][kDims], m[G], l[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const float* qh = q + (t * shape.n_heads + h0 + g) * D + lane;
#pragma unroll
    for (int i = 0; i < kDims; ++i) qv[g][i] = qh[32 * i], acc[g][i] = 0;
    if (fused) normalize_and_rotate(qv[g], rope.q_norm, rope.eps, sin, cos, rope.adjacent_pairs);
#pragma unroll
    for (int i = 0; i < kDims; ++i) qv[g][i] *= scale;
    m[g] = -INFINITY, l[g] = 0;
  }
  for (int64_t c = c0; c <= last; c += round) {
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
    for (int g = 0; g < G; ++g) {
      float s[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float dot = 0;
#pragma unroll
        for (int i = 0; i < kDims; ++i) dot += qv[g][i] * (c + u <= last ? kr[u][i] : 0.0f);
        for (int o = 16; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        s[u] = c + u <= last ? dot : -INFINITY;
      }
      float m_new = m[g];
#pragma unroll
      for (int u = 0; u < U; ++u) m_new = fmaxf(m_new, s[u]);
      const float correction = expf(m[g] - m_new);  // 0 on the first chunk (m = -inf)
      l[g] *= correction;
#pragma unroll
      for (int i = 0; i < kDims; ++i) acc[g][i] *= correction;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (c + u > last) break;
        const float p = expf(s[u] - m_new);
        l[g] += p;
#pragma unroll
        for (int i = 0; i < kDims; ++i) acc[g][i] += p * vr[u][i];
      }
      m[g] = m_new;
    }
  }
  // Merge the warps, for each head: M = max of their maxima; num = sum acc_w e^(m_w - M),
  // den = sum l_w e^(m_w - M). Then each thread takes (head, dimension) elements.
  __shared__ float sm[kWarps][G], sl[kWarps][G], sacc[kWarps][G][D], head_den[G], weight[G][kWarps];
  if (lane == 0)
#pragma unroll
    for (int g = 0; g < G; ++g) sm[warp][g] = m[g], sl[warp][g] = l[g];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int i = 0; i < kDims; ++i) sacc[warp][g][lane + 32 * i] = acc[g][i];
  __syncthreads();
  __shared__ float head_max[G];
  if (threadIdx.x < G) {
    const int g = threadIdx.x;
    float M = -INFINITY, den = 0;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w][g]);
    for (int w = 0; w < kWarps; ++w) {
      weight[g][w] = sl[w][g] > 0 ? expf(sm[w][g] - M) : 0.0f;  // a warp with no positions adds nothing
      den += sl[w][g] * weight[g][w];
    }
    head_max[g] = M, head_den[g] = den;
  }
  __syncthreads();
  auto merged = [&](int g, int d) {
    float num = 0;
    for (int w = 0; w < kWarps; ++w) num += sacc[w][g][d] * weight[g][w];
    return num;
  };
  const int64_t row0 = t * shape.n_heads + h0;  // the block's first (token, head) row
  if (gridDim.z == 1) {
    for (int e = threadIdx.x; e < G * D; e += blockDim.x) out[row0 * D + e] = merged(e / D, e % D) / head_den[e / D];
    return;
  }
  // Several splits: each writes (max, sum, weighted values) per head; the last of the block's
  // heads to finish merges them and sets their count back to 0.
  const int splits = int(gridDim.z);
  auto split_row = [&](int g, int sp) { return partial + ((row0 + g) * splits + sp) * (D + 2); };  // [m, l, acc[D]]
  if (threadIdx.x < G) {
    float* mine = split_row(threadIdx.x, int(split));
    mine[0] = head_max[threadIdx.x], mine[1] = head_den[threadIdx.x];
  }
  for (int e = threadIdx.x; e < G * D; e += blockDim.x) split_row(e / D, int(split))[2 + e % D] = merged(e / D, e % D);
  // Counted with release semantics once the block's writes are in (the barrier orders every
  // thread's before thread 0's count); the last count acquires them all. A full fence by every
  // thread, then a relaxed count, cost one more wait on L2 in each block.
  __syncthreads();
  __shared__ bool last_split;
  if (threadIdx.x == 0) {
    int before;
    asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(before) : "l"(done + row0) : "memory");
    last_split = before == splits - 1;
  }
  __syncthreads();
  if (!last_split) return;
  if (threadIdx.x == 0) done[row0] = 0;
  // Each thread reads (max, sum, value) of 8 splits at a time, all loads in flight at once (one
  // wait on L2 for up to 8 splits), and folds them in: out = sum_s acc_s e^(m_s - M) / sum_s l_s
  // e^(m_s - M), rescaled as M grows from one group of 8 to the next. A split past the token's last
  // position has sum 0 and values 0: weight 0.
  for (int e = threadIdx.x; e < G * D; e += blockDim.x) {
    const int g = e / D, d = e % D;
    float all_max = -INFINITY, num = 0, total = 0;
    for (int first_split = 0; first_split < splits; first_split += 8) {
      float m_s[8], l_s[8], v_s[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        m_s[j] = -INFINITY, l_s[j] = 0, v_s[j] = 0;
        if (first_split + j < splits) {
          const float* r = split_row(g, first_split + j);
          m_s[j] = __ldcg(r), l_s[j] = __ldcg(r + 1), v_s[j] = __ldcg(r + 2 + d);
        }
      }
      float new_max = all_max;
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (l_s[j] > 0) new_max = fmaxf(new_max, m_s[j]);
      const float rescale = total > 0 ? expf(all_max - new_max) : 0.0f;
      num *= rescale, total *= rescale;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float w = l_s[j] > 0 ? expf(m_s[j] - new_max) : 0.0f;
        num += v_s[j] * w;
        total += l_s[j] * w;
      }
      all_max = new_max;
    }
    out[(row0 + g) * D + d] = num / total;
  }
}

}  // namespace

// The most of 8, 4 or 2 that share a kv head in every block, where that kernel is built (head_dim
// 32, 64 or 128, G x head_dim <= 512 for the warps' shared sums); else 1.
int attention_heads_per_block(const AttentionShape& shape) {
  const int64_t D = shape.kv.head_dim;
  if (D != 32 && D != 64 && D != 128) return 1;
  for (int g : {8, 4, 2})
    if (shape.group % g == 0 && shape.n_heads % g == 0 && shape.head_offset % g == 0 && g * D <= 512) return g;
  return 1;
}

bool attention_can_rope(int64_t head_dim, bool adjacent_pairs) {
  return head_dim % 32 == 0 && head_dim <= kMaxHeadDim && (adjacent_pairs || head_dim % 64 == 0);
}

AttentionGrid attention_grid(int64_t n_tokens, int64_t max_pos, const AttentionShape& shape) {
  // Split the context when the blocks alone would leave most SMs idle: aim for about 512 blocks,
  // each over at least 64 positions (one round of its warps). A power of two, so that a captured
  // decode step stays valid for long stretches of positions. (Finer splits measured slower: more
  // blocks, more partial results to merge. 1024 blocks instead of 512 gave the same speed after
  // 512 tokens and 10% (1b) and 6% (8b) less after 4K tokens, on one H200.) Heads share a block
  // only while that leaves at least 256 blocks: a block's heads are summed one after another, and
  // 64 blocks of 4 heads made a 1b decode step after 512 tokens 5% slower than 256 of one; after
  // 2,048 and 8,192 tokens 4 heads a block were 12% and 22% faster (one H200). With heads sharing
  // blocks, about 256 blocks in all: 1b decode after 8,192 tokens 713-716 tok/s against 667 with
  // 512 (fewer partial results for the last block of each to merge; the same after 2,048).
  constexpr int64_t kMinSpan = 64;
  // SHARDLM_CUDA_ATTENTION_MIN_BLOCKS=0: heads share blocks whenever they can (tests use it).
  const char* env = std::getenv("SHARDLM_CUDA_ATTENTION_MIN_BLOCKS");
  const int64_t fewest_blocks = env ? std::max(0LL, std::atoll(env)) : 256;
  const int64_t length = max_pos + 1;
  for (int heads = attention_heads_per_block(shape);; heads /= 2) {
    const int64_t target_blocks = heads > 1 ? 256 : 512;
    const int64_t rows = std::max<int64_t>(1, n_tokens * shape.n_heads / heads);
    const int64_t want = std::min({(length + kMinSpan - 1) / kMinSpan, std::max<int64_t>(1, target_blocks / rows),
                                   int64_t(kMaxSplits / heads)});
    int64_t splits = 1;
    while (splits * 2 <= want) splits *= 2;
    if (heads == 1 || rows * splits >= fewest_blocks) return {splits, heads};
  }
}

int64_t attention_partial_floats(int64_t n_tokens, const AttentionGrid& grid, const AttentionShape& shape) {
  return grid.splits > 1 ? n_tokens * shape.n_heads * grid.splits * (shape.kv.head_dim + 2) : 0;
}

void attention(const float* q, const float* k_pool, const float* v_pool, const int32_t* tables,
               const int32_t* table_offset, const int32_t* pos, int64_t n_tokens, AttentionGrid grid,
               AttentionShape shape, bool past_is_stored, const RopeStep* rope, float* partial, int32_t* counters,
               float* out, Stream s) {
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
  const int heads = grid.heads;
  if (heads < 1 || attention_heads_per_block(shape) % heads != 0 || grid.splits < 1 || grid.splits > kMaxSplits / heads ||
      (grid.splits > 1 && !partial))
    detail::fail_with("CUDA attention: a grid that attention_grid does not give");
  const float scale = 1.0f / std::sqrt(float(D));
  const dim3 blocks(unsigned(n_tokens), unsigned(shape.n_heads / heads), unsigned(grid.splits));
  using Kernel = void (*)(const float*, const float*, const float*, const int32_t*, const int32_t*, const int32_t*,
                          AttentionShape, float, bool, RopeStep, float*, float*, int32_t*);
  // [head_dim / 32 - 1] with one head a block; [heads / 2] for head_dim 32, 64 or 128 (heads_per_block).
  constexpr Kernel one_head[] = {attention_kernel<1, 1>, attention_kernel<2, 1>, attention_kernel<3, 1>,
                                 attention_kernel<4, 1>, attention_kernel<5, 1>, attention_kernel<6, 1>,
                                 attention_kernel<7, 1>, attention_kernel<8, 1>};
  constexpr Kernel d32[] = {nullptr, attention_kernel<1, 2>, attention_kernel<1, 4>, nullptr, attention_kernel<1, 8>};
  constexpr Kernel d64[] = {nullptr, attention_kernel<2, 2>, attention_kernel<2, 4>, nullptr, attention_kernel<2, 8>};
  constexpr Kernel d128[] = {nullptr, attention_kernel<4, 2>, attention_kernel<4, 4>};
  const Kernel kernel = heads == 1 ? one_head[D / 32 - 1] : D == 32 ? d32[heads / 2] : D == 64 ? d64[heads / 2] : d128[heads / 2];
  detail::launch_overlapping("attention", kernel, blocks, 32 * kWarps, s, q, k_pool, v_pool, tables, table_offset, pos,
                             shape, scale, past_is_stored, rope ? *rope : RopeStep{}, out, partial, counters);
}

}  // namespace shardlm::cuda
