// Weight-streaming matmul for decode (a step reads every weight once from HBM, so the kernel is
// as fast as the bytes it keeps in flight): a block of 8 warps takes 1, 2, 4 or 8 weight rows, the
// warps of a row each stream a slice of it (split-K, so narrow matrices still fill the GPU), each
// lane keeps up to four 16-byte loads in flight, and the slices' sums meet in shared memory. Rows
// of x go in passes of R (1, 2, 4 or 8, templated so one row needs few registers and the SM holds
// many warps). Prefill's many rows go to the tensor cores instead (tensor_core_gemm.h).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"

namespace shardlm::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kLaneElements = 8;                   // one 16-byte bf16/f16 load (two for f32)
constexpr int kWarpElements = 32 * kLaneElements;  // 256 weights per warp-wide load

// 8 consecutive weights, loaded raw (16 bytes of bf16, 32 of f32: few registers per load in flight)
// and widened to f32 only when multiplied with 8 values of x.
struct Bf16Row {
  using Raw = uint4;
  __device__ static Raw load(const void* row, int64_t k) {
    return *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(row) + k);
  }
  __device__ static float dot(const Raw& w, const float4& a, const float4& b) {
    auto lo = [](uint32_t v) { return __uint_as_float(v << 16); };
    auto hi = [](uint32_t v) { return __uint_as_float(v & 0xffff0000u); };
    return lo(w.x) * a.x + hi(w.x) * a.y + lo(w.y) * a.z + hi(w.y) * a.w + lo(w.z) * b.x + hi(w.z) * b.y +
           lo(w.w) * b.z + hi(w.w) * b.w;
  }
};
struct F16Row {
  using Raw = uint4;
  __device__ static Raw load(const void* row, int64_t k) {
    return *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(row) + k);
  }
  __device__ static float dot(const Raw& w, const float4& a, const float4& b) {
    auto lo = [](uint32_t v) { return __half2float(__ushort_as_half(uint16_t(v & 0xffffu))); };
    auto hi = [](uint32_t v) { return __half2float(__ushort_as_half(uint16_t(v >> 16))); };
    return lo(w.x) * a.x + hi(w.x) * a.y + lo(w.y) * a.z + hi(w.y) * a.w + lo(w.z) * b.x + hi(w.z) * b.y +
           lo(w.w) * b.z + hi(w.w) * b.w;
  }
};
// GGUF blocks of 32 (core/dtype.h): an f16 scale, then 32 int8 (q8_0) or 32 nibbles (q4_0: element
// j in the low nibble of byte j, j + 16 in its high nibble). A lane's 8 weights lie in one block;
// blocks are only 2-byte aligned, so the loads are 16-bit.
struct Q8Row {
  struct Raw {
    uint16_t scale, q[4];
  };
  __device__ static Raw load(const void* row, int64_t k) {
    const uint16_t* block = reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(row) + k / 32 * 34);
    const uint16_t* q = block + 1 + (k % 32) / 2;
    return {block[0], {q[0], q[1], q[2], q[3]}};
  }
  __device__ static float dot(const Raw& w, const float4& a, const float4& b) {
    auto v = [&](int i) { return float(int8_t(uint8_t(w.q[i / 2] >> (8 * (i % 2))))); };
    const float sum = v(0) * a.x + v(1) * a.y + v(2) * a.z + v(3) * a.w + v(4) * b.x + v(5) * b.y + v(6) * b.z +
                      v(7) * b.w;
    return __half2float(__ushort_as_half(w.scale)) * sum;
  }
};
struct Q4Row {
  struct Raw {
    uint16_t scale, q[4];  // 8 bytes: one nibble of each is a weight
    bool high;             // the block's elements 16..31: the bytes' high nibbles
  };
  __device__ static Raw load(const void* row, int64_t k) {
    const uint16_t* block = reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(row) + k / 32 * 18);
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
};
struct F32Row {
  struct Raw {
    float4 a, b;
  };
  __device__ static Raw load(const void* row, int64_t k) {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(row) + k);
    return {p[0], p[1]};
  }
  __device__ static float dot(const Raw& w, const float4& a, const float4& b) {
    return w.a.x * a.x + w.a.y * a.y + w.a.z * a.z + w.a.w * a.w + w.b.x * b.x + w.b.y * b.y + w.b.z * b.z +
           w.b.w * b.w;
  }
};

template <class W, int R, int U>  // R rows of x per pass, U loads in flight per lane
__global__ void __launch_bounds__(32 * kWarps, 4) matmul_kernel(const float* x, int64_t M, const void* weights, int64_t N,
                                                             int64_t K, int64_t row_bytes, float* y, bool accumulate,
                                                             int rows_per_block) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int slices = kWarps / rows_per_block, slice = warp / rows_per_block;
  // This warp's slice of a row: a multiple of 8 weights, so every load is whole.
  const int64_t span = (K + slices * kLaneElements - 1) / (slices * kLaneElements) * kLaneElements;
  const int64_t k_begin = slice * span, k_end = min(K, k_begin + span);
  __shared__ float sums[kWarps][R];
  // Blocks stay resident and walk the groups of rows (grid-stride), as a bandwidth probe does:
  // no waves of short-lived blocks, so loads stay in flight from start to end.
  const int64_t groups = (N + rows_per_block - 1) / rows_per_block;
  for (int64_t group = blockIdx.x; group < groups; group += gridDim.x) {
    const int64_t n = group * rows_per_block + warp % rows_per_block;
    const void* row = static_cast<const uint8_t*>(weights) + (n < N ? n : 0) * row_bytes;
    for (int64_t m0 = 0; m0 < M; m0 += R) {
      const int rows = int(M - m0 < R ? M - m0 : R);
      float acc[R] = {};
      if (n < N) {
        for (int64_t k0 = k_begin + lane * kLaneElements; k0 < k_end; k0 += U * kWarpElements) {
          typename W::Raw w[U];
#pragma unroll
          for (int u = 0; u < U; ++u)
            if (k0 + u * kWarpElements < k_end) w[u] = W::load(row, k0 + u * kWarpElements);
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int64_t k = k0 + u * kWarpElements;
            if (k >= k_end) break;
#pragma unroll
            for (int m = 0; m < R; ++m) {
              if (m >= rows) break;
              const float4* xp = reinterpret_cast<const float4*>(x + (m0 + m) * K + k);
              const float4 a = xp[0], b = xp[1];
              acc[m] += W::dot(w[u], a, b);
            }
          }
        }
      }
#pragma unroll
      for (int m = 0; m < R; ++m) {
        float s = acc[m];
        for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) sums[warp][m] = s;
      }
      __syncthreads();
      if (threadIdx.x < rows_per_block * R) {  // one thread per (weight row, row of x)
        const int r = threadIdx.x % rows_per_block, m = threadIdx.x / rows_per_block;
        const int64_t out_n = group * rows_per_block + r;
        if (out_n < N && m < rows) {
          float total = 0;
          for (int sl = 0; sl < slices; ++sl) total += sums[sl * rows_per_block + r][m];
          float* out = y + (m0 + m) * N + out_n;
          *out = accumulate ? *out + total : total;
        }
      }
      __syncthreads();  // sums is rewritten by the next pass
    }
  }
}

template <class W>
void launch(const float* x, int64_t M, const DeviceMatrix& w, float* y, bool accumulate, Stream s) {
  // Rows per block: as many as keep about 1024 blocks (8 per SM), so wide matrices give each warp
  // a long stretch of one row and narrow ones split their rows over more warps.
  int rows_per_block = kWarps;
  while (rows_per_block > 1 && w.rows / rows_per_block < 1024) rows_per_block /= 2;
  const auto args = [&](auto kernel) {
    // As many blocks as fit on the GPU at once (each walks several groups of rows), at most one per group.
    static int resident = 0;  // blocks per SM x SMs, the same for every launch of this kernel
    if (resident == 0) {
      int device = 0, sms = 0, per_sm = 0;
      cudaGetDevice(&device);
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32 * kWarps, 0);
      resident = std::max(1, sms * per_sm);
    }
    const unsigned blocks = unsigned(std::min<int64_t>(resident, (w.rows + rows_per_block - 1) / rows_per_block));
    kernel<<<blocks, 32 * kWarps, 0, s>>>(x, M, w.data, w.rows, w.cols, dtype_bytes(w.dtype, w.cols), y, accumulate,
                                          rows_per_block);
  };
  if (M == 1) args(matmul_kernel<W, 1, 8>);
  else if (M == 2) args(matmul_kernel<W, 2, 4>);
  else if (M <= 4) args(matmul_kernel<W, 4, 2>);
  else args(matmul_kernel<W, 8, 1>);
}

}  // namespace

void matmul(const float* x, int64_t M, const DeviceMatrix& w, float* y, bool accumulate, Stream s) {
  if (M == 0 || w.rows == 0) return;
  char why[160];
  if (w.cols % 8 != 0) {
    std::snprintf(why, sizeof why, "CUDA matmul: %lld columns is not a multiple of 8", (long long)w.cols);
    detail::fail_with(why);
  }
  switch (w.dtype) {
    case DType::BF16:
      launch<Bf16Row>(x, M, w, y, accumulate, s);
      break;
    case DType::F32:
      launch<F32Row>(x, M, w, y, accumulate, s);
      break;
    case DType::F16:
      launch<F16Row>(x, M, w, y, accumulate, s);
      break;
    case DType::Q8_0:
      launch<Q8Row>(x, M, w, y, accumulate, s);
      break;
    case DType::Q4_0:
      launch<Q4Row>(x, M, w, y, accumulate, s);
      break;
  }
  detail::check_launch("matmul");
}

}  // namespace shardlm::cuda
