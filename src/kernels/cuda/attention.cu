// Causal attention over the paged KV cache: one block of 128 threads per (query token, head).
// The block walks the token's positions 128 at a time with an online softmax: each thread scores
// one position, then each thread accumulates up to two of the head's dimensions over the chunk's
// values. Plain and correct first; a flash-decoding split over long contexts comes next.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"

namespace shardlm::cuda {
namespace {

constexpr int kThreads = 128;  // = positions per chunk
constexpr int kMaxHeadDim = 2 * kThreads;

template <bool kMax>
__device__ float block_reduce(float v, float* scratch) {
  for (int o = 16; o > 0; o /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, other) : v + other;
  }
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w) r = kMax ? fmaxf(r, scratch[w]) : r + scratch[w];
  __syncthreads();  // scratch is reused by the next reduction
  return r;
}

// One block per (token, head, split): positions [split * span, (split + 1) * span) of the token's
// 0..pos[t], with an online softmax. With one split the block writes the output; with several it
// writes its running max, sum and weighted values for combine_kernel (flash-decoding: a decode
// step has one token, so splitting the context is what puts every SM to work).
__global__ void attention_kernel(const float* q, const float* k_pool, const float* v_pool, const int32_t* tables,
                                 const int32_t* table_offset, const int32_t* pos, AttentionShape shape, float scale,
                                 int64_t span, float* out, float* partial) {
  const int64_t t = blockIdx.x, h = blockIdx.y, split = blockIdx.z, tid = threadIdx.x;
  const int64_t D = shape.kv.head_dim, bs = shape.kv.block_size, n_kv = shape.kv.n_kv_heads;
  const int64_t kv = (shape.head_offset + h) / shape.group - shape.kv_head_offset;
  const int32_t* table = tables + table_offset[t];
  const int64_t first = split * span, last = pos[t] < first + span - 1 ? int64_t(pos[t]) : first + span - 1;
  __shared__ float qs[kMaxHeadDim], ps[kThreads], scratch[kThreads / 32];
  const float* qh = q + (t * shape.n_heads + h) * D;
  for (int64_t d = tid; d < D; d += kThreads) qs[d] = qh[d] * scale;  // as the CPU kernel
  __syncthreads();
  auto row_of = [&](int64_t p) { return (int64_t(table[p / bs]) * n_kv + kv) * bs + p % bs; };

  float m = -INFINITY, l = 0, acc[2] = {0, 0};
  for (int64_t c = first; c <= last; c += kThreads) {
    const int64_t p = c + tid;
    float score = -INFINITY;
    if (p <= last) {
      const float* kr = k_pool + row_of(p) * D;
      float dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += qs[d] * kr[d];
      score = dot;
    }
    const float m_new = fmaxf(m, block_reduce<true>(score, scratch));
    const float pj = p <= last ? expf(score - m_new) : 0.0f;
    ps[tid] = pj;
    const float correction = expf(m - m_new);
    l = l * correction + block_reduce<false>(pj, scratch);  // also makes ps visible
    const int64_t n = last - c + 1 < kThreads ? last - c + 1 : kThreads;
    for (int i = 0; i < 2; ++i) {
      const int64_t d = tid + i * kThreads;
      if (d >= D) break;
      float a = acc[i] * correction;
      for (int64_t j = 0; j < n; ++j) a += ps[j] * v_pool[row_of(c + j) * D + d];
      acc[i] = a;
    }
    m = m_new;
    __syncthreads();  // ps is rewritten by the next chunk
  }
  const int64_t row = t * shape.n_heads + h;
  if (gridDim.z == 1) {
    for (int i = 0; i < 2; ++i) {
      const int64_t d = tid + i * kThreads;
      if (d < D) out[row * D + d] = acc[i] / l;
    }
    return;
  }
  float* mine = partial + (row * gridDim.z + split) * (D + 2);  // [m, l, acc[D]]
  if (tid == 0) mine[0] = m, mine[1] = l;
  for (int i = 0; i < 2; ++i) {
    const int64_t d = tid + i * kThreads;
    if (d < D) mine[2 + d] = acc[i];
  }
}

// Merges the splits of one (token, head): out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M).
__global__ void combine_kernel(const float* partial, int64_t splits, int64_t D, float* out) {
  const int64_t row = blockIdx.x;
  const float* p = partial + row * splits * (D + 2);
  float M = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) M = fmaxf(M, p[s * (D + 2)]);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float num = 0, den = 0;
    for (int64_t s = 0; s < splits; ++s) {
      const float* q = p + s * (D + 2);
      if (q[1] == 0) continue;  // a split past this token's last position
      const float w = expf(q[0] - M);
      num += q[2 + d] * w;
      den += q[1] * w;
    }
    out[row * D + d] = num / den;
  }
}

// Scratch for the splits' partial results, grown on demand (a rank uses one device).
float* partial_buffer(size_t floats) {
  static float* buffer = nullptr;
  static size_t size = 0;
  if (floats > size) {
    if (buffer) cudaFree(buffer);
    buffer = nullptr;
    size = 0;
    if (cudaMalloc(&buffer, floats * sizeof(float)) != cudaSuccess) detail::fail_with("CUDA attention: out of memory");
    size = floats;
  }
  return buffer;
}

}  // namespace

void attention(const float* q, const float* k_pool, const float* v_pool, const int32_t* tables,
               const int32_t* table_offset, const int32_t* pos, int64_t n_tokens, int64_t max_pos, AttentionShape shape,
               float* out, Stream s) {
  if (n_tokens == 0 || shape.n_heads == 0) return;
  if (shape.kv.head_dim > kMaxHeadDim) {
    char why[96];
    std::snprintf(why, sizeof why, "CUDA attention: head_dim %lld is over %d", (long long)shape.kv.head_dim,
                  kMaxHeadDim);
    detail::fail_with(why);
  }
  const float scale = 1.0f / std::sqrt(float(shape.kv.head_dim));
  // Split the context when (token, head) blocks alone would leave most SMs idle: aim for about
  // 512 blocks, each over at least 256 positions.
  constexpr int64_t kMinSpan = 256, kTargetBlocks = 512;
  const int64_t rows = n_tokens * shape.n_heads, length = max_pos + 1;
  int64_t splits = rows >= kTargetBlocks ? 1 : std::min((length + kMinSpan - 1) / kMinSpan, kTargetBlocks / rows);
  splits = std::max<int64_t>(splits, 1);
  const int64_t span = (length + splits - 1) / splits;
  float* partial = splits > 1 ? partial_buffer(size_t(rows * splits * (shape.kv.head_dim + 2))) : nullptr;
  attention_kernel<<<dim3(unsigned(n_tokens), unsigned(shape.n_heads), unsigned(splits)), kThreads, 0, s>>>(
      q, k_pool, v_pool, tables, table_offset, pos, shape, scale, span, out, partial);
  detail::check_launch("attention");
  if (splits > 1) {
    combine_kernel<<<unsigned(rows), 128, 0, s>>>(partial, splits, shape.kv.head_dim, out);
    detail::check_launch("attention combine");
  }
}

}  // namespace shardlm::cuda
