// Causal attention of a long prompt on the tensor cores, flash-attention style: the scores never
// leave the chip. The keys and values are first gathered from the paged f32 cache into contiguous
// bf16 [kv head][position][head_dim]; then a block of 4 warps takes 64 query rows of one head
// (16 rows a warp) and walks the keys 64 at a time, double-buffered in shared memory (cp.async):
// S = Q K^T and O += P V are bf16 mma.sync products with f32 accumulators, and the online softmax
// runs on S where the mma left it (each lane holds 2 rows x 16 keys), so P goes back into the next
// mma as registers, never through shared memory.
//
// Fragment layouts of mma.m16n8k16 (lane = 4 g + t): A (16 x 16, row-major) reg0 = (g, 2t..2t+1),
// reg1 = (g + 8, 2t..), reg2 = (g, 2t + 8..), reg3 = (g + 8, 2t + 8..); B (16 x 8) reg0 = (k 2t..2t+1,
// n g), reg1 = (k 2t + 8.., n g); C (16 x 8) c0, c1 = (g, 2t..2t+1), c2, c3 = (g + 8, 2t..). So the C
// tiles of keys 16j..16j+7 and 16j+8..16j+15 are, packed to bf16, exactly the A fragment of keys
// 16j..16j+15 for P V.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>

#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"

namespace shardlm::cuda {
namespace {

constexpr int kWarps = 4, kRows = 16 * kWarps, kKeys = 64;

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return uint32_t(detail::round_to_bf16(lo)) | uint32_t(detail::round_to_bf16(hi)) << 16;
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8 x 8 bf16 matrices from shared memory, lanes 8i..8i+7 naming the rows of matrix i; with
// trans each lane gets the transposed matrices' elements.
template <bool kTrans>
__device__ __forceinline__ void load_matrices(uint32_t (&r)[4], const void* row) {
  const uint32_t at = uint32_t(__cvta_generic_to_shared(row));
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(at));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(at));
}

__device__ __forceinline__ void copy_16_bytes(void* shared, const void* global) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(uint32_t(__cvta_generic_to_shared(shared))),
               "l"(global));
}

// Keys and values of positions [0, length) from the paged f32 pools to bf16 [kv head][length][D]
// (one thread per pair of floats).
__global__ void gather_kv_bf16_kernel(const float* k_pool, const float* v_pool, const int32_t* table, int64_t length,
                                      KvShape shape, uint32_t* k_out, uint32_t* v_out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, D = shape.head_dim;
  if (i >= shape.n_kv_heads * length * D / 2) return;
  const int64_t d = 2 * i % D, p = (2 * i / D) % length, h = 2 * i / (D * length);
  const int64_t at = ((int64_t(table[p / shape.block_size]) * shape.n_kv_heads + h) * shape.block_size +
                      p % shape.block_size) * D + d;
  const float2 k = *reinterpret_cast<const float2*>(k_pool + at), v = *reinterpret_cast<const float2*>(v_pool + at);
  k_out[i] = pack_bf16(k.x, k.y);
  v_out[i] = pack_bf16(v.x, v.y);
}

template <int D>
constexpr int kPitch = D + 8;  // bf16 per shared row: 16 bytes of padding keep ldmatrix free of bank conflicts

template <int D>
__global__ void __launch_bounds__(32 * kWarps, 3) flash_attention_kernel(const float* q, const uint16_t* keys,
                                                                      const uint16_t* values, int64_t start, int64_t n,
                                                                      AttentionShape shape, float scale_log2,
                                                                      float* out) {
  extern __shared__ __align__(16) uint16_t tiles[];  // [2 buffers][K, V][kKeys][kPitch]
  constexpr int P = kPitch<D>, kTile = kKeys * P;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // The longest rows first: they take the most keys. Blocks start in the order of blockIdx.x, then
  // y, so the heads vary fastest: every head's longest rows go before any head's shorter ones.
  const int64_t tile = gridDim.y - 1 - blockIdx.y;
  const int64_t h = blockIdx.x, length = start + n;
  const int64_t kv = (shape.head_offset + h) / shape.group - shape.kv_head_offset;
  const uint16_t* K = keys + kv * length * D;
  const uint16_t* V = values + kv * length * D;
  const int64_t row0 = tile * kRows + warp * 16;  // this warp's first query row
  const int64_t key_end = start + min(n, (tile + 1) * kRows), n_tiles = (key_end + kKeys - 1) / kKeys;

  auto load_tile = [&](int64_t kt, int buffer) {
    uint16_t* k_tile = tiles + 2 * buffer * kTile;
    uint16_t* v_tile = k_tile + kTile;
    constexpr int kChunks = kKeys * D / 8;  // 16 bytes each
    for (int c = threadIdx.x; c < kChunks; c += 32 * kWarps) {
      const int r = c / (D / 8), col = c % (D / 8) * 8;
      // Rows past the last key read the last one: finite values that the mask gives weight 0.
      const int64_t key = min(kt * kKeys + r, key_end - 1);
      copy_16_bytes(k_tile + r * P + col, K + key * D + col);
      copy_16_bytes(v_tile + r * P + col, V + key * D + col);
    }
    asm volatile("cp.async.commit_group;");
  };
  load_tile(0, 0);

  // This warp's 16 query rows as A fragments, scaled so that the softmax can use exp2.
  uint32_t qa[D / 16][4];
  const float* qh = q + h * D;
  const int64_t stride = shape.n_heads * D;
  auto q_pair = [&](int64_t row, int col) {
    if (row >= n) return 0u;
    const float2 v = *reinterpret_cast<const float2*>(qh + row * stride + col);
    return pack_bf16(v.x * scale_log2, v.y * scale_log2);
  };
#pragma unroll
  for (int c = 0; c < D / 16; ++c) {
    qa[c][0] = q_pair(row0 + g, 16 * c + 2 * t);
    qa[c][1] = q_pair(row0 + g + 8, 16 * c + 2 * t);
    qa[c][2] = q_pair(row0 + g, 16 * c + 2 * t + 8);
    qa[c][3] = q_pair(row0 + g + 8, 16 * c + 2 * t + 8);
  }
  float o[D / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};  // rows g and g + 8
  const int64_t pos[2] = {start + row0 + g, start + row0 + g + 8};

  for (int64_t kt = 0; kt < n_tiles; ++kt) {
    if (kt + 1 < n_tiles) {
      load_tile(kt + 1, (kt + 1) % 2);
      asm volatile("cp.async.wait_group 1;" ::: "memory");
    } else {
      asm volatile("cp.async.wait_group 0;" ::: "memory");
    }
    __syncthreads();
    const uint16_t* k_tile = tiles + 2 * (kt % 2) * kTile;
    const uint16_t* v_tile = k_tile + kTile;
    // S [16][64] = Q K^T: ldmatrix gives the B fragments of two 8-key tiles per 16 dimensions.
    float s[kKeys / 8][4] = {};
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
#pragma unroll
      for (int j = 0; j < kKeys / 16; ++j) {
        uint32_t b[4];
        const int mi = lane / 8;
        load_matrices<false>(b, k_tile + (16 * j + mi / 2 * 8 + lane % 8) * P + 16 * c + mi % 2 * 8);
        mma_bf16(s[2 * j], qa[c], b[0], b[1]);
        mma_bf16(s[2 * j + 1], qa[c], b[2], b[3]);
      }
    }
    // Causal mask where the tile reaches past this warp's first position.
    const int64_t first_key = kt * kKeys;
    if (first_key + kKeys - 1 > start + row0) {
#pragma unroll
      for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (first_key + 8 * j + 2 * t + e % 2 > pos[e / 2]) s[j][e] = -INFINITY;
    }
    // Online softmax: the row's running max over the tile (4 lanes share a row), rescaled sums.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m[r];
#pragma unroll
      for (int j = 0; j < kKeys / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float correction = exp2f(m[r] - mx);  // 0 on the first tile (m = -inf); key 0 is never masked
      m[r] = mx;
      l[r] *= correction;
#pragma unroll
      for (int e = 0; e < D / 8; ++e) o[e][2 * r] *= correction, o[e][2 * r + 1] *= correction;
#pragma unroll
      for (int j = 0; j < kKeys / 8; ++j) {
        s[j][2 * r] = exp2f(s[j][2 * r] - mx);
        s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - mx);
        l[r] += s[j][2 * r] + s[j][2 * r + 1];
      }
    }
    // O [16][D] += P V: P's A fragments from S's registers, V's B fragments by transposed ldmatrix.
#pragma unroll
    for (int j = 0; j < kKeys / 16; ++j) {
      const uint32_t pa[4] = {pack_bf16(s[2 * j][0], s[2 * j][1]), pack_bf16(s[2 * j][2], s[2 * j][3]),
                              pack_bf16(s[2 * j + 1][0], s[2 * j + 1][1]), pack_bf16(s[2 * j + 1][2], s[2 * j + 1][3])};
#pragma unroll
      for (int f = 0; f < D / 16; ++f) {
        uint32_t b[4];
        const int mi = lane / 8;
        load_matrices<true>(b, v_tile + (16 * j + mi % 2 * 8 + lane % 8) * P + 16 * f + mi / 2 * 8);
        mma_bf16(o[2 * f], pa, b[0], b[1]);
        mma_bf16(o[2 * f + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();  // this buffer is refilled two tiles on
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int64_t row = row0 + g + 8 * r;
    if (row >= n) continue;
    float* dst = out + row * stride + h * D + 2 * t;
#pragma unroll
    for (int e = 0; e < D / 8; ++e)
      *reinterpret_cast<float2*>(dst + 8 * e) = make_float2(o[e][2 * r] / l[r], o[e][2 * r + 1] / l[r]);
  }
}

template <int D>
void launch_flash(const float* q, const uint16_t* k, const uint16_t* v, int64_t start, int64_t n,
                  const AttentionShape& shape, float* out, Stream s) {
  constexpr int kBytes = 4 * kKeys * kPitch<D> * 2;  // two buffers of a K and a V tile
  static const bool configured = [] {
    return cudaFuncSetAttribute(flash_attention_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes) ==
           cudaSuccess;
  }();
  if (!configured) detail::fail_with("flash attention: cannot reserve its shared memory");
  if ((n + kRows - 1) / kRows > 65535) detail::fail_with("flash attention: a chunk of more than 65,535 x 64 tokens");
  const dim3 grid(unsigned(shape.n_heads), unsigned((n + kRows - 1) / kRows));
  const float scale_log2 = float(1.0 / std::sqrt(double(D)) * M_LOG2E);
  flash_attention_kernel<D><<<grid, 32 * kWarps, kBytes, s>>>(q, k, v, start, n, shape, scale_log2, out);
  detail::check_launch("flash_attention");
}

}  // namespace

bool flash_attention_supports(int64_t head_dim) { return head_dim == 64 || head_dim == 128; }

void flash_attention(const float* q, const float* k_pool, const float* v_pool, const int32_t* table, int64_t start,
                     int64_t n, const AttentionShape& shape, uint16_t* k_scratch, uint16_t* v_scratch, float* out,
                     Stream s) {
  if (n == 0 || shape.n_heads == 0) return;
  const int64_t D = shape.kv.head_dim, length = start + n, pairs = shape.kv.n_kv_heads * length * D / 2;
  if (!flash_attention_supports(D)) detail::fail_with("flash attention: head_dim is not 64 or 128");
  gather_kv_bf16_kernel<<<detail::blocks_for(pairs, 256), 256, 0, s>>>(
      k_pool, v_pool, table, length, shape.kv, reinterpret_cast<uint32_t*>(k_scratch),
      reinterpret_cast<uint32_t*>(v_scratch));
  detail::check_launch("gather_kv_bf16");
  if (D == 64) launch_flash<64>(q, k_scratch, v_scratch, start, n, shape, out, s);
  else launch_flash<128>(q, k_scratch, v_scratch, start, n, shape, out, s);
}

}  // namespace shardlm::cuda
