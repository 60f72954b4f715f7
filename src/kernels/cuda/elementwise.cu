// Row-wise and element-wise operations: RMSNorm, RoPE with the KV cache store, SwiGLU, add.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/block_sum.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/overlap.cuh"

namespace shardlm::cuda {
namespace {

constexpr int kThreads = 256;

// One block per row: sum of squares by the block, then scale. Rows of up to kMaxVectors x 4 x
// kThreads floats (8192) are read once, as float4s held in registers (all loads in flight at
// once: a decode step's norm is one row, so its latency is the whole cost); longer rows loop.
constexpr int kMaxVectors = 8;

// Normalized values to y: f32, or rounded to 16 bits (Half: detail::Bf16Bits / F16Bits) as the
// next tensor-core product takes them. One value at i, or four at 4j.
template <class Half>
__device__ __forceinline__ void store1(float* y, int64_t i, float v) { y[i] = v; }
template <class Half>
__device__ __forceinline__ void store1(uint16_t* y, int64_t i, float v) { y[i] = Half::round(v); }
template <class Half>
__device__ __forceinline__ void store4(float* y, int64_t j, float4 v) { reinterpret_cast<float4*>(y)[j] = v; }
template <class Half>
__device__ __forceinline__ void store4(uint16_t* y, int64_t j, float4 v) {
  reinterpret_cast<uint2*>(y)[j] = make_uint2(uint32_t(Half::round(v.x)) | uint32_t(Half::round(v.y)) << 16,
                                              uint32_t(Half::round(v.z)) | uint32_t(Half::round(v.w)) << 16);
}

template <class Half, class T>
__global__ void rmsnorm_vector_kernel(const float* x, const float* w, T* y, int64_t dim, float eps) {
  detail::let_next_start();
  const float4* xr = reinterpret_cast<const float4*>(x + blockIdx.x * dim);
  const float4* wr = reinterpret_cast<const float4*>(w);
  T* yr = y + blockIdx.x * dim;
  const int64_t n = dim / 4;
  float4 v[kMaxVectors], g[kMaxVectors];
#pragma unroll
  for (int i = 0; i < kMaxVectors; ++i) {  // the weights (constant) while the kernel before finishes
    const int64_t j = threadIdx.x + int64_t(i) * blockDim.x;
    if (j < n) g[i] = wr[j];
  }
  detail::wait_for_previous();
  float s = 0;
#pragma unroll
  for (int i = 0; i < kMaxVectors; ++i) {
    const int64_t j = threadIdx.x + int64_t(i) * blockDim.x;
    v[i] = j < n ? xr[j] : make_float4(0, 0, 0, 0);
    s += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
  }
  const float scale = 1.0f / sqrtf(detail::block_sum(s) / float(dim) + eps);
#pragma unroll
  for (int i = 0; i < kMaxVectors; ++i) {
    const int64_t j = threadIdx.x + int64_t(i) * blockDim.x;
    if (j < n) {
      const float4 out = make_float4(g[i].x * (v[i].x * scale), g[i].y * (v[i].y * scale), g[i].z * (v[i].z * scale),
                                     g[i].w * (v[i].w * scale));
      store4<Half>(yr, j, out);
    }
  }
}

template <class Half, class T>
__global__ void rmsnorm_kernel(const float* x, const float* w, T* y, int64_t dim, float eps) {
  detail::let_next_start();
  detail::wait_for_previous();
  const float* xr = x + blockIdx.x * dim;
  T* yr = y + blockIdx.x * dim;
  float s = 0;
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i] * xr[i];
  const float scale = 1.0f / sqrtf(detail::block_sum(s) / float(dim) + eps);
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) store1<Half>(yr, i, w[i] * (xr[i] * scale));
}

// A block per (token, group of heads of q and k), a warp per head: the head's RMSNorm (Qwen3,
// when given), then RoPE at the token's position; q rotated in place, k written to the paged cache
// with v's head beside it. Each lane holds whole rotation pairs (i and i + D/2, or 2i and 2i + 1),
// so nothing crosses lanes but the norm's sum. The sines and cosines are the token's, computed once
// per block. A long prompt's blocks take 16 heads, 4 a warp, all loaded before any is used (a
// warp's loads in flight, not the sincosf per head and lane of a block per 4 heads, set the pace);
// a decode step's take a warp's worth, one each (latency is the cost there).
constexpr int kHeadWarps = 4;
constexpr int kMaxHeadDim = 256;
constexpr int kMaxPairs = kMaxHeadDim / 64;  // rotation pairs per lane

template <int kWarpHeads>
__global__ void rope_and_store_kernel(RopeStep p) {
  detail::let_next_start();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t = blockIdx.y, D = p.kv.head_dim, kv_heads = p.kv.n_kv_heads, half = D / 2;
  const int64_t first = int64_t(blockIdx.x) * kHeadWarps * kWarpHeads + warp, heads = p.n_heads + kv_heads;
  // While the kernel before finishes, what does not depend on it: the sines and cosines at the
  // token's position and the cache block k and v go to (the step's inputs were copied before its
  // first kernel).
  __shared__ float sines[kMaxHeadDim / 2], cosines[kMaxHeadDim / 2];
  const int64_t position = p.pos[t];
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x)
    sincosf(float(position) * p.inv_freq[i], &sines[i], &cosines[i]);  // f32 product, as on the CPU
  const int64_t block = p.tables[p.table_offset[t] + position / p.kv.block_size];
  const int64_t slot = (block * kv_heads * p.kv.block_size + position % p.kv.block_size) * D;  // + kv head's offset
  __syncthreads();
  // Pair j of a lane: elements lo(j) and hi(j) of the head.
  auto lo = [&](int j) { const int64_t i = lane + 32 * j; return p.adjacent_pairs ? 2 * i : i; };
  auto hi = [&](int j) { const int64_t i = lane + 32 * j; return p.adjacent_pairs ? 2 * i + 1 : i + half; };
  const int64_t q_row = p.in_stride ? p.in_stride : p.n_heads * D, kv_row = p.in_stride ? p.in_stride : kv_heads * D;
  const float* q_in = p.q_in ? p.q_in : p.q;
  auto row_of = [&](int64_t head) {
    return head < p.n_heads ? q_in + t * q_row + head * D : p.k + t * kv_row + (head - p.n_heads) * D;
  };
  detail::wait_for_previous();
  float x0[kWarpHeads][kMaxPairs], x1[kWarpHeads][kMaxPairs];
#pragma unroll
  for (int w = 0; w < kWarpHeads; ++w) {
    const int64_t head = first + w * kHeadWarps;
    if (head >= heads) break;
    const float* src = row_of(head);
#pragma unroll
    for (int j = 0; j < kMaxPairs; ++j)
      if (lane + 32 * j < half) x0[w][j] = src[lo(j)], x1[w][j] = src[hi(j)];
  }
#pragma unroll
  for (int w = 0; w < kWarpHeads; ++w) {
    const int64_t head = first + w * kHeadWarps;
    if (head >= heads) break;
    const bool is_q = head < p.n_heads;
    const float* norm = is_q ? p.q_norm : p.k_norm;
    if (norm) {
      float sum = 0;
#pragma unroll
      for (int j = 0; j < kMaxPairs; ++j)
        if (lane + 32 * j < half) sum += x0[w][j] * x0[w][j] + x1[w][j] * x1[w][j];
      for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      const float scale = 1.0f / sqrtf(sum / float(D) + p.eps);
#pragma unroll
      for (int j = 0; j < kMaxPairs; ++j)
        if (lane + 32 * j < half) x0[w][j] = norm[lo(j)] * (x0[w][j] * scale), x1[w][j] = norm[hi(j)] * (x1[w][j] * scale);
    }
    float* dst = p.q + (t * p.n_heads + head) * D;
    if (!is_q) {
      const int64_t at = slot + (head - p.n_heads) * p.kv.block_size * D;
      dst = p.k_pool + at;
      const float* values = p.v + t * kv_row + (head - p.n_heads) * D;
      for (int64_t d = lane; d < D; d += 32) p.v_pool[at + d] = values[d];
    }
#pragma unroll
    for (int j = 0; j < kMaxPairs; ++j) {
      const int64_t i = lane + 32 * j;
      if (i >= half) break;
      dst[lo(j)] = x0[w][j] * cosines[i] - x1[w][j] * sines[i];
      dst[hi(j)] = x1[w][j] * cosines[i] + x0[w][j] * sines[i];
    }
  }
}

// Output i is silu(y[2i]) * y[2i + 1] whatever the row (rows of pairs are back to back); a thread
// takes two: one 16-byte load.
__global__ void swiglu_pairs_kernel(const float* y, float* out, int64_t n) {
  detail::let_next_start();
  detail::wait_for_previous();
  const int64_t i = 2 * (int64_t(blockIdx.x) * blockDim.x + threadIdx.x);
  auto silu_times = [](float gate, float up) { return gate / (1.0f + expf(-gate)) * up; };
  if (i + 1 < n) {
    const float4 v = *reinterpret_cast<const float4*>(y + 2 * i);
    out[i] = silu_times(v.x, v.y);
    out[i + 1] = silu_times(v.z, v.w);
  } else if (i < n) {
    out[i] = silu_times(y[2 * i], y[2 * i + 1]);
  }
}

// The same from 16-bit gate and up values (the tensor cores' output): a thread takes four pairs,
// one 16-byte load, and writes four 16-bit outputs.
template <class Half>
__global__ void swiglu_half_pairs_kernel(const uint16_t* y, uint16_t* out, int64_t n) {
  detail::let_next_start();
  detail::wait_for_previous();
  const int64_t i = 4 * (int64_t(blockIdx.x) * blockDim.x + threadIdx.x);
  auto silu_times = [](uint16_t gate_bits, uint16_t up_bits) {
    const float gate = Half::widen(gate_bits), up = Half::widen(up_bits);
    return Half::round(gate / (1.0f + expf(-gate)) * up);
  };
  if (i + 3 < n) {
    const uint4 v = *reinterpret_cast<const uint4*>(y + 2 * i);
    auto pair = [&](uint32_t w) { return uint32_t(silu_times(uint16_t(w & 0xffffu), uint16_t(w >> 16))); };
    *reinterpret_cast<uint2*>(out + i) = make_uint2(pair(v.x) | pair(v.y) << 16, pair(v.z) | pair(v.w) << 16);
  } else {
    for (int64_t j = i; j < n; ++j) out[j] = silu_times(y[2 * j], y[2 * j + 1]);
  }
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
  detail::let_next_start();
  detail::wait_for_previous();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] += y[i];
}

// Four floats a thread (one 16-byte load).
template <class Half>
__global__ void to_half_kernel(const float* x, uint16_t* y, int64_t n) {
  const int64_t i = 4 * (int64_t(blockIdx.x) * blockDim.x + threadIdx.x);
  if (i + 3 < n) {
    const float4 v = *reinterpret_cast<const float4*>(x + i);
    *reinterpret_cast<uint2*>(y + i) = make_uint2(uint32_t(Half::round(v.x)) | uint32_t(Half::round(v.y)) << 16,
                                                  uint32_t(Half::round(v.z)) | uint32_t(Half::round(v.w)) << 16);
  } else {
    for (int64_t j = i; j < n; ++j) y[j] = Half::round(x[j]);
  }
}

// The key of ops.h's argmax_rows: ordered value bits, then ~index.
__device__ unsigned long long argmax_key(float value, int32_t index) {
  const uint32_t bits = __float_as_uint(value + 0.0f);  // -0 as +0: equal values, as a scan compares them
  const uint32_t ordered = bits & 0x80000000u ? ~bits : bits | 0x80000000u;
  return (unsigned long long)ordered << 32 | uint32_t(~uint32_t(index));
}

// Blocks of 256 threads over a row's slices: each thread keeps its best (value, index), the block
// merges them, and the blocks of a row meet by atomicMax on the packed key (ops.h).
__global__ void argmax_kernel(const float* logits, int64_t cols, unsigned long long* keys) {
  detail::let_next_start();
  detail::wait_for_previous();
  const float* row = logits + blockIdx.y * cols;
  float best = -INFINITY;
  int64_t at = -1;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < cols; i += int64_t(gridDim.x) * blockDim.x)
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
    if (at >= 0 && best == best) atomicMax(keys + blockIdx.y, argmax_key(best, int32_t(at)));
  }
}

// x = hi + lo, both in Half: hi = Half(x), lo = Half(x - hi) (bf16: together about 16 bits of mantissa).
template <class Half>
__global__ void split_half_kernel(const float* x, uint16_t* hi, uint16_t* lo, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    const uint16_t h = Half::round(x[i]);
    hi[i] = h;
    lo[i] = Half::round(x[i] - Half::widen(h));
  }
}

__global__ void add_halves_kernel(float* y, const float* halves, int64_t n, bool accumulate) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = (accumulate ? y[i] : 0.0f) + (halves[i] + halves[n + i]);
}

}  // namespace

namespace {
// One launch for rows of `dim` into y (f32, or 16-bit bits of Half).
template <class Half, class T>
void launch_rmsnorm(const float* x, const float* weight, T* y, int64_t n, int64_t dim, float eps, Stream s) {
  if (n == 0) return;
  if (dim % 4 == 0 && dim <= int64_t(kMaxVectors) * 4 * kThreads) {
    // As few threads as hold the row (a head's 128 floats take one warp), at least one warp.
    const int threads = int(std::min<int64_t>(kThreads, std::max<int64_t>(32, (dim / 4 + 31) / 32 * 32)));
    detail::launch_overlapping("rmsnorm", rmsnorm_vector_kernel<Half, T>, unsigned(n), threads, s, x, weight, y, dim, eps);
  } else {
    detail::launch_overlapping("rmsnorm", rmsnorm_kernel<Half, T>, unsigned(n), kThreads, s, x, weight, y, dim, eps);
  }
}
}  // namespace

void rmsnorm(const float* x, const float* weight, float* y, int64_t n, int64_t dim, float eps, Stream s) {
  launch_rmsnorm<detail::Bf16Bits>(x, weight, y, n, dim, eps, s);
}

void rmsnorm(const float* x, const float* weight, uint16_t* y, int64_t n, int64_t dim, float eps, DType half,
             Stream s) {
  detail::with_half_bits(half, [&](auto bits) { launch_rmsnorm<decltype(bits)>(x, weight, y, n, dim, eps, s); });
}

void rope_and_store(const RopeStep& step, int64_t n_tokens, Stream s) {
  const int64_t heads = step.n_heads + step.kv.n_kv_heads;
  if (n_tokens == 0 || heads == 0) return;
  if (step.kv.head_dim % 2 != 0 || step.kv.head_dim > kMaxHeadDim) detail::fail_with("CUDA rope: head_dim must be even and at most 256");
  auto launch = [&](auto kernel, int64_t per_block) {
    const dim3 grid(unsigned((heads + per_block - 1) / per_block), unsigned(n_tokens));
    detail::launch_overlapping("rope_and_store", kernel, grid, 32 * kHeadWarps, s, step);
  };
  if (n_tokens >= 64) launch(rope_and_store_kernel<4>, 4 * kHeadWarps);
  else launch(rope_and_store_kernel<1>, kHeadWarps);
}

void swiglu_pairs(const float* y, float* out, int64_t n, int64_t cols, Stream s) {
  const int64_t total = n * (cols / 2);
  if (total == 0) return;
  detail::launch_overlapping("swiglu_pairs", swiglu_pairs_kernel, detail::blocks_for(total, 2 * kThreads), kThreads, s,
                             y, out, total);
}

void swiglu_half_pairs(const uint16_t* y, uint16_t* out, int64_t n, int64_t cols, DType half, Stream s) {
  const int64_t total = n * (cols / 2);
  if (total == 0) return;
  const unsigned blocks = detail::blocks_for(total, 4 * kThreads);
  detail::with_half_bits(half, [&](auto bits) {
    detail::launch_overlapping("swiglu_half_pairs", swiglu_half_pairs_kernel<decltype(bits)>, blocks, kThreads, s, y,
                               out, total);
  });
}

void add(float* x, const float* y, int64_t n, Stream s) {
  if (n == 0) return;
  detail::launch_overlapping("add", add_kernel, detail::blocks_for(n, kThreads), kThreads, s, x, y, n);
}

void to_half(const float* x, uint16_t* y, int64_t n, DType half, Stream s) {
  if (n == 0) return;
  const unsigned blocks = detail::blocks_for(n, 4 * kThreads);
  detail::with_half_bits(half, [&](auto bits) { to_half_kernel<decltype(bits)><<<blocks, kThreads, 0, s>>>(x, y, n); });
  detail::check_launch("to_half");
}

void argmax_rows(const float* logits, int64_t rows, int64_t cols, uint64_t* keys, Stream s) {
  if (rows == 0) return;
  if (cudaMemsetAsync(keys, 0, size_t(rows) * sizeof(uint64_t), s) != cudaSuccess)  // 0: below every real key
    detail::fail_with("CUDA argmax: clearing the keys failed");
  const unsigned per_row = unsigned(std::clamp<int64_t>(cols / 2048, 1, 128));  // 8+ logits a thread
  detail::launch_overlapping("argmax", argmax_kernel, dim3(per_row, unsigned(rows)), kThreads, s, logits, cols,
                             reinterpret_cast<unsigned long long*>(keys));
}

void split_half(const float* x, uint16_t* hi, uint16_t* lo, int64_t n, DType half, Stream s) {
  if (n == 0) return;
  const unsigned blocks = detail::blocks_for(n, kThreads);
  detail::with_half_bits(half, [&](auto bits) {
    split_half_kernel<decltype(bits)><<<blocks, kThreads, 0, s>>>(x, hi, lo, n);
  });
  detail::check_launch("split_half");
}

void add_halves(float* y, const float* halves, int64_t n, bool accumulate, Stream s) {
  if (n == 0) return;
  add_halves_kernel<<<detail::blocks_for(n, kThreads), kThreads, 0, s>>>(y, halves, n, accumulate);
  detail::check_launch("add_halves");
}

}  // namespace shardlm::cuda
