// Row-wise and element-wise operations: RMSNorm, RoPE, SwiGLU, add, and the KV cache store.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"

namespace shardlm::cuda {
namespace {

constexpr int kThreads = 256;

// One block per row: sum of squares by the block, then scale. Rows of up to kMaxVectors x 4 x
// kThreads floats (8192) are read once, as float4s held in registers (all loads in flight at
// once: a decode step's norm is one row, so its latency is the whole cost); longer rows loop.
constexpr int kMaxVectors = 8;

__device__ float block_sum(float s) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x < 32) {
    s = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0f;
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x == 0) partial[0] = s;
  }
  __syncthreads();
  return partial[0];
}

__global__ void rmsnorm_vector_kernel(const float* x, const float* w, float* y, int64_t dim, float eps) {
  const float4* xr = reinterpret_cast<const float4*>(x + blockIdx.x * dim);
  const float4* wr = reinterpret_cast<const float4*>(w);
  float4* yr = reinterpret_cast<float4*>(y + blockIdx.x * dim);
  const int64_t n = dim / 4;
  float4 v[kMaxVectors];
  float s = 0;
#pragma unroll
  for (int i = 0; i < kMaxVectors; ++i) {
    const int64_t j = threadIdx.x + int64_t(i) * blockDim.x;
    v[i] = j < n ? xr[j] : make_float4(0, 0, 0, 0);
    s += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
  }
  const float scale = 1.0f / sqrtf(block_sum(s) / float(dim) + eps);
#pragma unroll
  for (int i = 0; i < kMaxVectors; ++i) {
    const int64_t j = threadIdx.x + int64_t(i) * blockDim.x;
    if (j < n) {
      const float4 g = wr[j];
      yr[j] = make_float4(g.x * (v[i].x * scale), g.y * (v[i].y * scale), g.z * (v[i].z * scale), g.w * (v[i].w * scale));
    }
  }
}

__global__ void rmsnorm_kernel(const float* x, const float* w, float* y, int64_t dim, float eps) {
  const float* xr = x + blockIdx.x * dim;
  float* yr = y + blockIdx.x * dim;
  float s = 0;
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i] * xr[i];
  const float scale = 1.0f / sqrtf(block_sum(s) / float(dim) + eps);
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = w[i] * (xr[i] * scale);
}

// One thread per (token, head, pair).
__global__ void rope_kernel(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, const int32_t* positions,
                            const float* inv_freq, bool adjacent) {
  const int64_t half = head_dim / 2;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n_tokens * n_heads * half) return;
  const int64_t i = idx % half, th = idx / half, t = th / n_heads;
  float* v = x + th * head_dim;
  const float angle = float(positions[t]) * inv_freq[i];  // f32 product, as on the CPU
  float s, c;
  sincosf(angle, &s, &c);
  const int64_t a = adjacent ? 2 * i : i, b = adjacent ? 2 * i + 1 : i + half;
  const float x0 = v[a], x1 = v[b];
  v[a] = x0 * c - x1 * s;
  v[b] = x1 * c + x0 * s;
}

__global__ void swiglu_kernel(const float* gate, const float* up, float* out, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] += y[i];
}

// Round to nearest even, as core/dtype's f32_to_bf16.
__device__ uint16_t round_to_bf16(float v) {
  const uint32_t b = __float_as_uint(v);
  return uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

__global__ void to_bf16_kernel(const float* x, uint16_t* y, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = round_to_bf16(x[i]);
}

// One block per row: each thread keeps its best (value, index), then the block merges them.
__global__ void argmax_kernel(const float* logits, int64_t cols, float* values, int32_t* indices) {
  const float* row = logits + blockIdx.x * cols;
  float best = -INFINITY;
  int64_t at = -1;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
    if (at < 0 || row[i] > best) best = row[i], at = i;
  // A candidate wins with a larger value, or an equal value at a lower index (-1: none).
  auto better = [](float v, int64_t i, float w, int64_t j) { return j < 0 || (i >= 0 && (v > w || (v == w && i < j))); };
  for (int o = 16; o > 0; o /= 2) {
    const float v = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t i = __shfl_xor_sync(0xffffffffu, at, o);
    if (better(v, i, best, at)) best = v, at = i;
  }
  __shared__ float warp_best[32];
  __shared__ int64_t warp_at[32];
  if (threadIdx.x % 32 == 0) warp_best[threadIdx.x / 32] = best, warp_at[threadIdx.x / 32] = at;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < int(blockDim.x / 32); ++w)
      if (better(warp_best[w], warp_at[w], best, at)) best = warp_best[w], at = warp_at[w];
    values[blockIdx.x] = best;
    indices[blockIdx.x] = int32_t(at < 0 ? 0 : at);
  }
}

// x = hi + lo with both bf16: hi = bf16(x), lo = bf16(x - hi) (together about 16 bits of mantissa).
__global__ void split_bf16_kernel(const float* x, uint16_t* hi, uint16_t* lo, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    const uint16_t h = round_to_bf16(x[i]);
    hi[i] = h;
    lo[i] = round_to_bf16(x[i] - __uint_as_float(uint32_t(h) << 16));
  }
}

__global__ void add_halves_kernel(float* y, const float* halves, int64_t n, bool accumulate) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = (accumulate ? y[i] : 0.0f) + (halves[i] + halves[n + i]);
}

// One block per token; threads over its kv heads x head_dim values.
__global__ void store_kv_kernel(float* k_pool, float* v_pool, const float* k, const float* v, const int32_t* tables,
                                const int32_t* table_offset, const int32_t* pos, KvShape shape) {
  const int64_t t = blockIdx.x, p = pos[t], row = p % shape.block_size;
  const int64_t block = tables[table_offset[t] + p / shape.block_size];
  const int64_t per_token = shape.n_kv_heads * shape.head_dim;
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < per_token; i += blockDim.x) {
    const int64_t h = i / shape.head_dim, d = i % shape.head_dim;
    const int64_t at = ((block * shape.n_kv_heads + h) * shape.block_size + row) * shape.head_dim + d;
    k_pool[at] = k[t * per_token + i];
    v_pool[at] = v[t * per_token + i];
  }
}

}  // namespace

void rmsnorm(const float* x, const float* weight, float* y, int64_t n, int64_t dim, float eps, Stream s) {
  if (n == 0) return;
  if (dim % 4 == 0 && dim <= int64_t(kMaxVectors) * 4 * kThreads) {
    // As few threads as hold the row (a head's 128 floats take one warp), at least one warp.
    const int threads = int(std::min<int64_t>(kThreads, std::max<int64_t>(32, (dim / 4 + 31) / 32 * 32)));
    rmsnorm_vector_kernel<<<unsigned(n), threads, 0, s>>>(x, weight, y, dim, eps);
  } else {
    rmsnorm_kernel<<<unsigned(n), kThreads, 0, s>>>(x, weight, y, dim, eps);
  }
  detail::check_launch("rmsnorm");
}

void rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq, bool adjacent_pairs, Stream s) {
  const int64_t n = n_tokens * n_heads * (head_dim / 2);
  if (n == 0) return;
  rope_kernel<<<detail::blocks_for(n, kThreads), kThreads, 0, s>>>(x, n_tokens, n_heads, head_dim, positions, inv_freq,
                                                                    adjacent_pairs);
  detail::check_launch("rope");
}

void swiglu(const float* gate, const float* up, float* out, int64_t n, Stream s) {
  if (n == 0) return;
  swiglu_kernel<<<detail::blocks_for(n, kThreads), kThreads, 0, s>>>(gate, up, out, n);
  detail::check_launch("swiglu");
}

void add(float* x, const float* y, int64_t n, Stream s) {
  if (n == 0) return;
  add_kernel<<<detail::blocks_for(n, kThreads), kThreads, 0, s>>>(x, y, n);
  detail::check_launch("add");
}

void to_bf16(const float* x, uint16_t* y, int64_t n, Stream s) {
  if (n == 0) return;
  to_bf16_kernel<<<detail::blocks_for(n, kThreads), kThreads, 0, s>>>(x, y, n);
  detail::check_launch("to_bf16");
}

void argmax_rows(const float* logits, int64_t rows, int64_t cols, float* values, int32_t* indices, Stream s) {
  if (rows == 0) return;
  argmax_kernel<<<unsigned(rows), 1024, 0, s>>>(logits, cols, values, indices);
  detail::check_launch("argmax");
}

void split_bf16(const float* x, uint16_t* hi, uint16_t* lo, int64_t n, Stream s) {
  if (n == 0) return;
  split_bf16_kernel<<<detail::blocks_for(n, kThreads), kThreads, 0, s>>>(x, hi, lo, n);
  detail::check_launch("split_bf16");
}

void add_halves(float* y, const float* halves, int64_t n, bool accumulate, Stream s) {
  if (n == 0) return;
  add_halves_kernel<<<detail::blocks_for(n, kThreads), kThreads, 0, s>>>(y, halves, n, accumulate);
  detail::check_launch("add_halves");
}

void store_kv(float* k_pool, float* v_pool, const float* k, const float* v, const int32_t* tables,
              const int32_t* table_offset, const int32_t* pos, int64_t n_tokens, KvShape shape, Stream s) {
  if (n_tokens == 0) return;
  store_kv_kernel<<<unsigned(n_tokens), kThreads, 0, s>>>(k_pool, v_pool, k, v, tables, table_offset, pos, shape);
  detail::check_launch("store_kv");
}

}  // namespace shardlm::cuda
