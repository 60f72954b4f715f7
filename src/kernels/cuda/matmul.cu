// Weight-streaming matmul: one warp per weight row, 16-byte loads, f32 accumulation. A decode
// step (M <= 8) reads every weight once from HBM; larger M runs in passes of 8 rows over the same
// warp's row, which then comes from L1 (prefill; a tensor-core path is the next step).
#include <cuda_runtime.h>

#include <cstdio>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"

namespace shardlm::cuda {
namespace {

constexpr int kRowsPerPass = 8;
constexpr int kWarpsPerBlock = 8;

// 8 consecutive weights as f32, from 16 bytes (bf16) or 32 bytes (f32).
struct Bf16Row {
  static constexpr int kBytes = 2;
  __device__ static void load8(const void* row, int64_t k, float (&w)[8]) {
    const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(row) + k);
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[2 * i] = __uint_as_float(words[i] << 16);
      w[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  }
};
struct F32Row {
  static constexpr int kBytes = 4;
  __device__ static void load8(const void* row, int64_t k, float (&w)[8]) {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(row) + k);
    const float4 a = p[0], b = p[1];
    w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
  }
};

template <class W>
__global__ void matmul_kernel(const float* x, int64_t M, const void* weights, int64_t N, int64_t K, float* y,
                              bool accumulate) {
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= N) return;
  const void* row = static_cast<const uint8_t*>(weights) + n * K * W::kBytes;
  for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
    const int rows = int(M - m0 < kRowsPerPass ? M - m0 : kRowsPerPass);
    float acc[kRowsPerPass] = {};
    // Two 16-byte weight loads in flight per lane per iteration (more bytes in flight per SM).
    for (int64_t k0 = int64_t(lane) * 8; k0 < K; k0 += 2 * 32 * 8) {
      const bool second = k0 + 32 * 8 < K;
      float w[2][8];
      W::load8(row, k0, w[0]);
      if (second) W::load8(row, k0 + 32 * 8, w[1]);
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        if (u == 1 && !second) break;
        const int64_t k = k0 + u * 32 * 8;
#pragma unroll
        for (int m = 0; m < kRowsPerPass; ++m) {
          if (m < rows) {
            const float4* xp = reinterpret_cast<const float4*>(x + (m0 + m) * K + k);
            const float4 a = xp[0], b = xp[1];
            acc[m] += w[u][0] * a.x + w[u][1] * a.y + w[u][2] * a.z + w[u][3] * a.w + w[u][4] * b.x + w[u][5] * b.y +
                      w[u][6] * b.z + w[u][7] * b.w;
          }
        }
      }
    }
#pragma unroll
    for (int m = 0; m < kRowsPerPass; ++m) {
      float s = acc[m];
      for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (lane == 0 && m < rows) {
        float* out = y + (m0 + m) * N + n;
        *out = accumulate ? *out + s : s;
      }
    }
  }
}

}  // namespace

void matmul(const float* x, int64_t M, const DeviceMatrix& w, float* y, bool accumulate, Stream s) {
  if (M == 0 || w.rows == 0) return;
  char why[160];
  if (w.cols % 8 != 0) {
    std::snprintf(why, sizeof why, "CUDA matmul: %lld columns is not a multiple of 8", (long long)w.cols);
    detail::fail_with(why);
  }
  const unsigned blocks = detail::blocks_for(w.rows, kWarpsPerBlock);
  switch (w.dtype) {
    case DType::BF16:
      matmul_kernel<Bf16Row><<<blocks, 32 * kWarpsPerBlock, 0, s>>>(x, M, w.data, w.rows, w.cols, y, accumulate);
      break;
    case DType::F32:
      matmul_kernel<F32Row><<<blocks, 32 * kWarpsPerBlock, 0, s>>>(x, M, w.data, w.rows, w.cols, y, accumulate);
      break;
    default:
      std::snprintf(why, sizeof why, "CUDA matmul: %.*s weights are not supported yet (f32 and bf16 are)",
                    int(dtype_name(w.dtype).size()), dtype_name(w.dtype).data());
      detail::fail_with(why);
  }
  detail::check_launch("matmul");
}

}  // namespace shardlm::cuda
