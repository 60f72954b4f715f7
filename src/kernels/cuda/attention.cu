// Causal attention over the paged KV cache: one block of 128 threads per (query token, head).
// The block walks the token's positions 128 at a time with an online softmax: each thread scores
// one position, then each thread accumulates up to two of the head's dimensions over the chunk's
// values. Plain and correct first; a flash-decoding split over long contexts comes next.
#include <cuda_runtime.h>

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

__global__ void attention_kernel(const float* q, const float* k_pool, const float* v_pool, const int32_t* tables,
                                 const int32_t* table_offset, const int32_t* pos, AttentionShape shape, float scale,
                                 float* out) {
  const int64_t t = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
  const int64_t D = shape.kv.head_dim, bs = shape.kv.block_size, n_kv = shape.kv.n_kv_heads;
  const int64_t kv = (shape.head_offset + h) / shape.group - shape.kv_head_offset;
  const int32_t* table = tables + table_offset[t];
  const int64_t last = pos[t];
  __shared__ float qs[kMaxHeadDim], ps[kThreads], scratch[kThreads / 32];
  const float* qh = q + (t * shape.n_heads + h) * D;
  for (int64_t d = tid; d < D; d += kThreads) qs[d] = qh[d] * scale;  // as the CPU kernel
  __syncthreads();
  auto row_of = [&](int64_t p) { return (int64_t(table[p / bs]) * n_kv + kv) * bs + p % bs; };

  float m = -INFINITY, l = 0, acc[2] = {0, 0};
  for (int64_t c = 0; c <= last; c += kThreads) {
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
  for (int i = 0; i < 2; ++i) {
    const int64_t d = tid + i * kThreads;
    if (d < D) out[(t * shape.n_heads + h) * D + d] = acc[i] / l;
  }
}

}  // namespace

void attention(const float* q, const float* k_pool, const float* v_pool, const int32_t* tables,
               const int32_t* table_offset, const int32_t* pos, int64_t n_tokens, AttentionShape shape, float* out,
               Stream s) {
  if (n_tokens == 0 || shape.n_heads == 0) return;
  if (shape.kv.head_dim > kMaxHeadDim) {
    char why[96];
    std::snprintf(why, sizeof why, "CUDA attention: head_dim %lld is over %d", (long long)shape.kv.head_dim,
                  kMaxHeadDim);
    detail::fail_with(why);
  }
  const float scale = 1.0f / std::sqrt(float(shape.kv.head_dim));
  attention_kernel<<<dim3(unsigned(n_tokens), unsigned(shape.n_heads)), kThreads, 0, s>>>(
      q, k_pool, v_pool, tables, table_offset, pos, shape, scale, out);
  detail::check_launch("attention");
}

}  // namespace shardlm::cuda
