// Weight-streaming matmul for decode (a step reads every weight once from HBM, so the kernel is
// as fast as the bytes it keeps in flight): a block of 8 warps takes 1, 2, 4 or 8 weight rows, the
// warps of a row each stream a slice of it (split-K, so narrow matrices still fill the GPU), each
// lane keeps two batches of 16-byte loads in flight (read past L1, which keeps x), and the
// slices' sums meet in shared memory, where the epilogue also splits a stacked q|k|v product into
// its three outputs or applies SwiGLU to (gate, up) row pairs. Rows of x go in passes of R (1, 2,
// 4 or 8, templated so one row needs few registers and the SM holds many warps). Prefill's many
// rows go to the tensor cores instead (tensor_core_gemm.h).
// (gate|up and down once shared a launch, a grid-wide barrier between them: with the RMSNorm
// inside the products that became slower than two launches, 1b decode 1,026-1,030 against
// 1,086-1,088 tok/s after 16 tokens and the 8b preset's 215.6-215.8 against 220.6-220.9, one H200.)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <limits>

#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/block_sum.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/overlap.cuh"

namespace shardlm::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kLaneElements = 8;                   // one 16-byte bf16/f16 load (two for f32)
constexpr int kWarpElements = 32 * kLaneElements;  // 256 weights per warp-wide load

// Weights are read once: through the read-only path and past L1, which keeps x for every row.
__device__ __forceinline__ uint4 load_once(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// 8 consecutive weights, loaded raw (16 bytes of bf16, 32 of f32: few registers per load in flight)
// and widened to f32 only when multiplied with 8 values of x.
struct Bf16Row {
  using Raw = uint4;
  __device__ static const void* at(const void* row, int64_t k) { return static_cast<const uint16_t*>(row) + k; }
  __device__ static Raw load(const void* row, int64_t k) { return load_once(at(row, k)); }
  __device__ static float dot(const Raw& w, const float4& a, const float4& b) {
    auto lo = [](uint32_t v) { return __uint_as_float(v << 16); };
    auto hi = [](uint32_t v) { return __uint_as_float(v & 0xffff0000u); };
    return lo(w.x) * a.x + hi(w.x) * a.y + lo(w.y) * a.z + hi(w.y) * a.w + lo(w.z) * b.x + hi(w.z) * b.y +
           lo(w.w) * b.z + hi(w.w) * b.w;
  }
  __device__ static void widen(const Raw& w, float (&v)[8]) {
    const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) v[2 * i] = __uint_as_float(words[i] << 16), v[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
};
struct F16Row {
  using Raw = uint4;
  __device__ static const void* at(const void* row, int64_t k) { return static_cast<const uint16_t*>(row) + k; }
  __device__ static Raw load(const void* row, int64_t k) { return load_once(at(row, k)); }
  __device__ static float dot(const Raw& w, const float4& a, const float4& b) {
    float v[8];
    widen(w, v);
    return v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w + v[4] * b.x + v[5] * b.y + v[6] * b.z + v[7] * b.w;
  }
  __device__ static void widen(const Raw& w, float (&v)[8]) {
    const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = __half2float(__ushort_as_half(uint16_t(words[i] & 0xffffu)));
      v[2 * i + 1] = __half2float(__ushort_as_half(uint16_t(words[i] >> 16)));
    }
  }
};
// GGUF blocks of 32 (core/dtype.h): an f16 scale, then 32 int8 (q8_0) or 32 nibbles (q4_0: element
// j in the low nibble of byte j, j + 16 in its high nibble). A lane's 8 weights lie in one block;
// blocks are only 2-byte aligned, so the loads are 16-bit.
struct Q8Row {
  struct Raw {
    uint16_t scale, q[4];
  };
  __device__ static const void* at(const void* row, int64_t k) { return static_cast<const uint8_t*>(row) + k / 32 * 34; }
  __device__ static Raw load(const void* row, int64_t k) {
    const uint16_t* block = static_cast<const uint16_t*>(at(row, k));
    const uint16_t* q = block + 1 + (k % 32) / 2;
    return {block[0], {q[0], q[1], q[2], q[3]}};
  }
  __device__ static float dot(const Raw& w, const float4& a, const float4& b) {
    auto v = [&](int i) { return float(int8_t(uint8_t(w.q[i / 2] >> (8 * (i % 2))))); };
    const float sum = v(0) * a.x + v(1) * a.y + v(2) * a.z + v(3) * a.w + v(4) * b.x + v(5) * b.y + v(6) * b.z +
                      v(7) * b.w;
    return __half2float(__ushort_as_half(w.scale)) * sum;
  }
  __device__ static void widen(const Raw& w, float (&v)[8]) {
    const float scale = __half2float(__ushort_as_half(w.scale));
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = scale * float(int8_t(uint8_t(w.q[i / 2] >> (8 * (i % 2)))));
  }
};
struct Q4Row {
  struct Raw {
    uint16_t scale, q[4];  // 8 bytes: one nibble of each is a weight
    bool high;             // the block's elements 16..31: the bytes' high nibbles
  };
  __device__ static const void* at(const void* row, int64_t k) { return static_cast<const uint8_t*>(row) + k / 32 * 18; }
  __device__ static Raw load(const void* row, int64_t k) {
    const uint16_t* block = static_cast<const uint16_t*>(at(row, k));
    const int j = int(k % 32);
    const uint16_t* q = block + 1 + (j % 16) / 2;
    return {block[0], {q[0], q[1], q[2], q[3]}, j >= 16};
  }
  __device__ static float dot(const Raw& w, const float4& a, const float4& b) {
    const int shift = w.high ? 4 : 0;
    auto v = [&](int i) { return float(int((w.q[i / 2] >> (8 * (i % 2) + shift)) & 0xfu) - 8); };
    const float sum = v(0) * a.x + v(1) * a.y + v(2) * a.z + v(3) * a.w + v(4) * b.x + v(5) * b.y + v(6) * b.z +
                      v(7) * b.w;
    return __half2float(__ushort_as_half(w.scale)) * sum;
  }
  __device__ static void widen(const Raw& w, float (&v)[8]) {
    const float scale = __half2float(__ushort_as_half(w.scale));
    const int shift = w.high ? 4 : 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = scale * float(int((w.q[i / 2] >> (8 * (i % 2) + shift)) & 0xfu) - 8);
  }
};
struct F32Row {
  struct Raw {
    float4 a, b;
  };
  __device__ static const void* at(const void* row, int64_t k) { return static_cast<const float*>(row) + k; }
  __device__ static Raw load(const void* row, int64_t k) {
    const uint4 a = load_once(at(row, k)), b = load_once(at(row, k + 4));
    return {make_float4(__uint_as_float(a.x), __uint_as_float(a.y), __uint_as_float(a.z), __uint_as_float(a.w)),
            make_float4(__uint_as_float(b.x), __uint_as_float(b.y), __uint_as_float(b.z), __uint_as_float(b.w))};
  }
  __device__ static float dot(const Raw& w, const float4& a, const float4& b) {
    return w.a.x * a.x + w.a.y * a.y + w.a.z * a.z + w.a.w * a.w + w.b.x * b.x + w.b.y * b.y + w.b.z * b.z +
           w.b.w * b.w;
  }
  __device__ static void widen(const Raw& w, float (&v)[8]) {
    v[0] = w.a.x, v[1] = w.a.y, v[2] = w.a.z, v[3] = w.a.w, v[4] = w.b.x, v[5] = w.b.y, v[6] = w.b.z, v[7] = w.b.w;
  }
};

// Where the sums go (MatmulOutput, flattened for the kernel): output columns [0, ends[0]) to
// parts[0] as [M][ends[0]], [ends[0], ends[1]) to parts[1], ...; with swiglu, column pairs
// (gate, up) to parts[0] [M][N / 2] as silu(gate) * up.
struct Epilogue {
  float* parts[3];
  int64_t ends[3];
  bool accumulate, swiglu;

  __device__ void store(int64_t m, int64_t n, float total) const {
    int p = 0;
    while (n >= ends[p]) ++p;
    const int64_t begin = p == 0 ? 0 : ends[p - 1];
    float* out = parts[p] + m * (ends[p] - begin) + (n - begin);
    *out = accumulate ? *out + total : total;
  }
};

// A warp's walk through its block's work: groups of rows (grid-stride), passes over x's rows,
// batches of U loads of the warp's slice, in that nesting. Every warp of a block walks the same
// sequence, so they meet at each (group, pass)'s epilogue.
struct Cursor {
  int64_t group;
  int pass, batch;
  __device__ void next(int passes, int batches, int64_t stride) {
    if (++batch < batches) return;
    batch = 0;
    if (++pass < passes) return;
    pass = 0;
    group += stride;
  }
};

// One product's weights as a kernel walks them (the arguments of a launch).
struct Product {
  const float* x;
  int64_t M;
  const void* weights;
  int64_t N, K, row_bytes;
  Epilogue out;
  int rows_per_block;
  const float* norm;  // RMSNorm weights x's rows are normalized with first (by every block), or null
  float eps;
};
// Groups of rows_per_block rows: the units blocks take in turn (grid-stride).
__host__ __device__ inline int64_t groups_of(const Product& p) { return (p.N + p.rows_per_block - 1) / p.rows_per_block; }

// A block's walk through one product: groups of rows (grid-stride), passes over x's rows, batches
// of U loads of each warp's slice of a row, in that nesting; every warp of a block walks the same
// sequence, so they meet at each (group, pass)'s epilogue. Blocks stay resident and walk the
// groups of rows, as a bandwidth probe does: no waves of short-lived blocks. Loads are double-
// buffered: the next batch is in flight while this one is summed, across the ends of rows and
// groups too, so the epilogue's barriers never leave a warp with nothing in flight.
template <class W, int R, int U>  // R rows of x per pass, U loads per batch per lane
struct Walk {
  using Raw = typename W::Raw;
  const Product& p;
  const float* x;  // p.x, or its rows normalized in shared memory
  int warp, lane, slices, slice, batches, passes;
  int64_t k_lane, k_end, groups;

  __device__ explicit Walk(const Product& product) : p(product), x(product.x) {
    warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    slices = kWarps / p.rows_per_block, slice = warp / p.rows_per_block;
    // This warp's slice of a row: a multiple of 8 weights, so every load is whole.
    const int64_t span = (p.K + slices * kLaneElements - 1) / (slices * kLaneElements) * kLaneElements;
    k_lane = slice * span + lane * kLaneElements, k_end = min(p.K, slice * span + span);
    batches = int((span + U * kWarpElements - 1) / (U * kWarpElements));
    passes = int((p.M + R - 1) / R);
    groups = groups_of(p);
  }
  __device__ bool has_work() const { return blockIdx.x < groups; }
  __device__ Cursor start() const { return {blockIdx.x, 0, 0}; }
  __device__ void next(Cursor& c) const { c.next(passes, batches, gridDim.x); }
  __device__ int64_t row_of(const Cursor& c) const { return c.group * p.rows_per_block + warp % p.rows_per_block; }

  __device__ void issue(Raw (&w)[U], const Cursor& c) const {
    const int64_t n = row_of(c);
    if (c.group >= groups || n >= p.N) return;
    const void* row = static_cast<const uint8_t*>(p.weights) + n * p.row_bytes;
    const int64_t k0 = k_lane + int64_t(c.batch) * U * kWarpElements;
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (k0 + u * kWarpElements < k_end) w[u] = W::load(row, k0 + u * kWarpElements);
  }

  __device__ void consume(const Raw (&w)[U], const Cursor& c, float (&acc)[R], float (*sums)[R]) const {
    const int64_t n = row_of(c), m0 = int64_t(c.pass) * R;
    const int rows = int(p.M - m0 < R ? p.M - m0 : R);
    if (n < p.N) {
      const int64_t k0 = k_lane + int64_t(c.batch) * U * kWarpElements;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t k = k0 + u * kWarpElements;
        if (k >= k_end) break;
#pragma unroll
        for (int m = 0; m < R; ++m) {
          if (m >= rows) break;
          const float4* xp = reinterpret_cast<const float4*>(x + (m0 + m) * p.K + k);
          const float4 a = xp[0], b = xp[1];
          acc[m] += W::dot(w[u], a, b);
        }
      }
    }
    if (c.batch + 1 < batches) return;
    // The (group, pass) is summed: the slices' sums meet in shared memory.
#pragma unroll
    for (int m = 0; m < R; ++m) {
      float s = acc[m];
      for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (lane == 0) sums[warp][m] = s;
      acc[m] = 0;
    }
    __syncthreads();
    const int per_block = p.rows_per_block;
    if (threadIdx.x < per_block * R) {  // one thread per (weight row, row of x)
      const int r = threadIdx.x % per_block, m = threadIdx.x / per_block;
      const int64_t out_n = c.group * per_block + r;
      auto total = [&](int row) {
        float t = 0;
        for (int sl = 0; sl < slices; ++sl) t += sums[sl * per_block + row][m];
        return t;
      };
      if (out_n < p.N && m < rows) {
        if (!p.out.swiglu) {
          p.out.store(m0 + m, out_n, total(r));
        } else if (r % 2 == 0) {  // rows_per_block is even: the pair's up row is r + 1
          const float gate = total(r), up = total(r + 1);
          p.out.parts[0][(m0 + m) * (p.N / 2) + out_n / 2] = gate / (1.0f + expf(-gate)) * up;
        }
      }
    }
    __syncthreads();  // sums is rewritten by the next epilogue
  }

  // The rest of the walk, its first batch already issued into `a` (at `load`, one ahead of `sum`).
  __device__ void finish(Raw (&a)[U], Cursor load, float (*sums)[R]) const {
    Raw b[U];
    Cursor sum = start();
    float acc[R] = {};
    for (;;) {
      issue(b, load), next(load);
      consume(a, sum, acc, sums), next(sum);
      if (sum.group >= groups) break;
      issue(a, load), next(load);
      consume(b, sum, acc, sums), next(sum);
      if (sum.group >= groups) break;
    }
  }
};

// out [M][K] = RMSNorm of x's rows with weights w, by the whole block (as rmsnorm_vector_kernel),
// so that a product needs no norm launch before it.
__device__ void normalize_rows(const float* x, int64_t M, int64_t K, const float* w, float eps, float* out) {
  const float4* w4 = reinterpret_cast<const float4*>(w);
  for (int64_t m = 0; m < M; ++m) {
    const float4* row = reinterpret_cast<const float4*>(x + m * K);
    float s = 0;
    for (int64_t j = threadIdx.x; j < K / 4; j += blockDim.x) {
      const float4 v = row[j];
      s += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    const float scale = 1.0f / sqrtf(detail::block_sum(s) / float(K) + eps);
    float4* to = reinterpret_cast<float4*>(out + m * K);
    for (int64_t j = threadIdx.x; j < K / 4; j += blockDim.x) {
      const float4 v = row[j], g = w4[j];
      to[j] = make_float4(g.x * (v.x * scale), g.y * (v.y * scale), g.z * (v.z * scale), g.w * (v.w * scale));
    }
    __syncthreads();  // block_sum's result is rewritten by the next row; `out` is read by every warp
  }
}
// The rows a walk reads: x, or x normalized into shared memory.
__device__ const float* input_of(const Product& p, float* normalized) {
  if (!p.norm) return p.x;
  normalize_rows(p.x, p.M, p.K, p.norm, p.eps, normalized);
  return normalized;
}
// The most shared memory for normalized rows: with the static arrays, within the 48 KB a block
// may take without asking (M = 1: rows up to 8192 wide).
constexpr int kNormBytes = 32 << 10;

template <class W, int R, int U>
__global__ void __launch_bounds__(32 * kWarps, 4) matmul_kernel(const __grid_constant__ Product product) {
  extern __shared__ float4 normalized[];
  __shared__ float sums[kWarps][R];
  Walk<W, R, U> walk(product);
  if (!walk.has_work()) return;
  typename W::Raw a[U];
  Cursor load = walk.start();
  // While the kernel before may still be writing x (overlap.cuh): the first batch's weights. (Also
  // pulling the block's next 48 KB into L2 with prefetches measured 6% slower on the 8b preset.)
  detail::let_next_start();
  walk.issue(a, load), walk.next(load);
  detail::wait_for_previous();
  walk.x = input_of(product, reinterpret_cast<float*>(normalized));
  walk.finish(a, load, sums);
}

// One thread per 8 weights: widened to f32 as the matrix-vector kernel does, rounded to f16.
template <class W>
__global__ void to_f16_kernel(const void* weights, int64_t rows, int64_t K, int64_t row_bytes, uint4* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, per_row = K / kLaneElements;
  if (i >= rows * per_row) return;
  const int64_t r = i / per_row, k = i % per_row * kLaneElements;
  float v[8];
  W::widen(W::load(static_cast<const uint8_t*>(weights) + r * row_bytes, k), v);
  auto pair = [&](int j) {
    return uint32_t(detail::F16Bits::round(v[2 * j])) | uint32_t(detail::F16Bits::round(v[2 * j + 1])) << 16;
  };
  out[i] = make_uint4(pair(0), pair(1), pair(2), pair(3));
}

// A greedy step queued on the device (start_queued_step): its token is the row that the argmax
// key names (ops.h: ~index in its low word, 0 for none); thread 0 also hands the key to the host
// and advances the step's position.
struct QueuedStep {
  const unsigned long long* key = nullptr;
  unsigned long long* key_for_host = nullptr;
  int32_t* position = nullptr;
};
// One thread per 8 values of x: row ids[t] of the table widened to f32, as the kernels above read
// it, or for a queued step (n = 1) the row its key names.
template <class W>
__global__ void embed_kernel(const void* table, int64_t row_bytes, int64_t K, const int32_t* ids, int64_t n,
                             float4* x, QueuedStep queued) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, per_row = K / kLaneElements;
  if (i == 0 && queued.key) {
    *queued.key_for_host = *queued.key;
    ++*queued.position;
    __threadfence_system();
  }
  if (i >= n * per_row) return;
  const int64_t t = i / per_row, k = i % per_row * kLaneElements;
  const int64_t id = queued.key ? (*queued.key ? int64_t(~uint32_t(*queued.key)) : 0) : ids[t];
  float v[8];
  W::widen(W::load(static_cast<const uint8_t*>(table) + id * row_bytes, k), v);
  x[2 * i] = make_float4(v[0], v[1], v[2], v[3]);
  x[2 * i + 1] = make_float4(v[4], v[5], v[6], v[7]);
}

// Loads per batch: two batches in flight take 2U registers' worth of raw weights.
template <class W>
constexpr int kLoads = sizeof(typename W::Raw) > 16 ? 2 : 4;

// Calls f with a value of the row type of `dtype` (every type of core/dtype.h has one).
template <class F>
void with_row_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::BF16:
      return f(Bf16Row{});
    case DType::F32:
      return f(F32Row{});
    case DType::F16:
      return f(F16Row{});
    case DType::Q8_0:
      return f(Q8Row{});
    case DType::Q4_0:
      return f(Q4Row{});
  }
}

// Weights a warp reads of a row per batch of loads (kLoads of 8).
int64_t batch_weights(DType dtype) {
  int64_t loads = 0;
  with_row_type(dtype, [&](auto row) { loads = kLoads<decltype(row)>; });
  return loads * kWarpElements;
}

// The launch arguments of y = x W^T for the streaming kernels, `resident` blocks at once.
template <class W>
Product product_of(const float* x, int64_t M, const DeviceMatrix& w, const Epilogue& out, const float* norm,
                   float eps, int64_t resident) {
  const int rows_per_block = matmul_rows_per_block(w.rows, w.cols, w.dtype, out.swiglu, resident);
  return {x, M, w.data, w.rows, w.cols, dtype_bytes(w.dtype, w.cols), out, rows_per_block, norm, eps};
}

// Launches matmul_kernel<W, R, U> with as many blocks as fit on the GPU at once (each walks
// several groups of rows), at most one a group; with the norm, each normalizes x into shared memory.
template <class W, int R, int U>
void launch_resident(const float* x, int64_t M, const DeviceMatrix& w, const Epilogue& out, const float* norm,
                     float eps, Stream s) {
  constexpr auto kernel = matmul_kernel<W, R, U>;
  static const int64_t resident = [] {  // blocks per SM x SMs, the same for every launch of this kernel
    int device = 0, sms = 0, per_sm = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32 * kWarps, kNormBytes);
    if (sms < 1 || per_sm < 1) detail::fail_with("CUDA matmul: the streaming kernel does not fit on an SM");
    return int64_t(sms) * per_sm;
  }();
  const Product p = product_of<W>(x, M, w, out, norm, eps, resident);
  const size_t normalized = p.norm ? size_t(p.M * p.K) * sizeof(float) : 0;
  detail::launch_overlapping_shared(normalized, "matmul", kernel, unsigned(std::min<int64_t>(resident, groups_of(p))),
                                    32 * kWarps, s, p);
}

template <class W>
void launch(const float* x, int64_t M, const DeviceMatrix& w, const Epilogue& out, const float* norm, float eps,
            Stream s) {
  constexpr int U = kLoads<W>;  // R rows of x per pass, U loads per batch
  if (M == 1) launch_resident<W, 1, U>(x, M, w, out, norm, eps, s);
  else if (M == 2) launch_resident<W, 2, U / 2>(x, M, w, out, norm, eps, s);
  else if (M <= 4) launch_resident<W, 4, 1>(x, M, w, out, norm, eps, s);
  else launch_resident<W, 8, 1>(x, M, w, out, norm, eps, s);
}

// The epilogue of `out`, checked against the matrix.
Epilogue epilogue_of(const DeviceMatrix& w, const MatmulOutput& out) {
  char why[160];
  if (w.cols % 8 != 0 || w.cols == 0) {
    std::snprintf(why, sizeof why, "CUDA matmul: %lld columns is not a positive multiple of 8", (long long)w.cols);
    detail::fail_with(why);
  }
  // Each part's columns of the product (swiglu: twice its own, the gate and up of each).
  const int64_t per_column = out.swiglu ? 2 : 1;
  Epilogue e{{}, {w.rows, w.rows, w.rows}, out.accumulate, out.swiglu};
  int64_t end = 0;
  for (size_t p = 0; p < out.parts.size() && p < 3; ++p) {
    e.parts[p] = out.parts[p].y;
    e.ends[p] = end += per_column * out.parts[p].rows;
  }
  if (out.parts.empty() || out.parts.size() > 3 || end != w.rows || (out.swiglu && out.parts.size() != 1)) {
    std::snprintf(why, sizeof why, "CUDA matmul: outputs do not match the %lld rows of the matrix", (long long)w.rows);
    detail::fail_with(why);
  }
  return e;
}

}  // namespace

int matmul_rows_per_block(int64_t rows, int64_t cols, DType dtype, bool swiglu, int64_t resident) {
  // Of the row counts that leave each warp's slice of a row at least a whole batch of loads (and
  // SwiGLU its pairs), the ones whose groups keep the busiest block shortest (rounds of the
  // resident blocks x rows a group); among those, the fewest that still give each warp 4,096
  // weights of its row, else the most. One H200 against "about 1,024 groups": 1b down 12.3 ->
  // 11.6 us, 8b o 12.3 -> 11.9, other matrices of both presets as fast or as before (decode: 1b
  // 972-983 -> 1,005-1,006 tok/s after 512 tokens).
  const int64_t fewest = std::max<int64_t>(swiglu ? 2 : 1, kWarps * batch_weights(dtype) / std::max<int64_t>(cols, 1));
  const int64_t blocks = std::max<int64_t>(resident, 1);
  int rows_per_block = kWarps;
  int64_t busiest = std::numeric_limits<int64_t>::max();
  for (int r = kWarps; r >= fewest; r /= 2) {
    const int64_t groups = (rows + r - 1) / r, rounds = (groups + blocks - 1) / blocks;
    const bool long_slices = cols * r / kWarps >= 4096;
    if (rounds * r < busiest || (rounds * r == busiest && long_slices)) rows_per_block = r, busiest = rounds * r;
  }
  return rows_per_block;
}

bool matmul_can_normalize(int64_t M, int64_t K) { return K % 4 == 0 && M * K * int64_t(sizeof(float)) <= kNormBytes; }

void matmul(const float* x, int64_t M, const DeviceMatrix& w, const MatmulOutput& out, Stream s, const float* norm,
            float eps) {
  if (M == 0 || w.rows == 0) return;
  if (norm && !matmul_can_normalize(M, w.cols)) detail::fail_with("CUDA matmul: rows too long to normalize in place");
  const Epilogue e = epilogue_of(w, out);
  with_row_type(w.dtype, [&](auto row) { launch<decltype(row)>(x, M, w, e, norm, eps, s); });
}

void widen_to_f16(const DeviceMatrix& w, uint16_t* out, Stream s) {
  const int64_t n = w.rows * (w.cols / kLaneElements);
  if (n == 0) return;
  const unsigned blocks = detail::blocks_for(n, 256);
  const int64_t row_bytes = dtype_bytes(w.dtype, w.cols);
  if (w.dtype != DType::Q8_0 && w.dtype != DType::Q4_0)
    detail::fail_with("CUDA widen_to_f16: only q8_0 and q4_0 matrices are widened");
  with_row_type(w.dtype, [&](auto row) {
    to_f16_kernel<decltype(row)><<<blocks, 256, 0, s>>>(w.data, w.rows, w.cols, row_bytes, reinterpret_cast<uint4*>(out));
  });
  detail::check_launch("widen_to_f16");
}

namespace {
void launch_embed(const DeviceMatrix& table, const int32_t* ids, int64_t n, float* x, Stream s, QueuedStep queued = {}) {
  const int64_t count = n * (table.cols / kLaneElements);
  if (count == 0) return;
  if (table.cols % kLaneElements != 0) detail::fail_with("CUDA embed: the hidden size is not a multiple of 8");
  const unsigned blocks = detail::blocks_for(count, 256);
  const int64_t row_bytes = dtype_bytes(table.dtype, table.cols);
  with_row_type(table.dtype, [&](auto row) {
    embed_kernel<decltype(row)><<<blocks, 256, 0, s>>>(table.data, row_bytes, table.cols, ids, n,
                                                       reinterpret_cast<float4*>(x), queued);
  });
  detail::check_launch("embed");
}
}  // namespace

void embed(const DeviceMatrix& table, const int32_t* ids, int64_t n, float* x, Stream s) {
  launch_embed(table, ids, n, x, s);
}

void start_queued_step(const DeviceMatrix& table, const uint64_t* key, float* x, uint64_t* key_for_host,
                       int32_t* position, Stream s) {
  launch_embed(table, nullptr, 1, x, s,
               {reinterpret_cast<const unsigned long long*>(key), reinterpret_cast<unsigned long long*>(key_for_host),
                position});
}

void matmul(const float* x, int64_t M, const DeviceMatrix& w, float* y, bool accumulate, Stream s) {
  const MatmulPart part{y, w.rows};
  matmul(x, M, w, MatmulOutput{{&part, 1}, accumulate}, s);
}

}  // namespace shardlm::cuda
