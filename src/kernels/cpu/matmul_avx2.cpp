// AVX2 + FMA + F16C matmul kernels: the same structure as the AVX-512 ones with 8-lane vectors
// and 16 registers, so a 6x16 tile and four activation vectors at most on the decode path.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "kernels/cpu/matmul.h"

namespace shardlm::matmul_detail {

namespace {

constexpr int kTileRows = 6;     // 6 x 2 accumulators + 2 weight vectors + 1 broadcast of 16 ymm
constexpr int kPanelWidth = 16;
constexpr int kMaxDecodeRows = 4;

// Lane i enabled (all ones) for i < n.
inline __m256i first_lanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::clamp<int64_t>(n, 0, 8))),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline float reduce_add(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 16-bit elements [k, k+n) of a row, n < 8, zero-filled: AVX2 has no 16-bit masked load.
inline __m128i load_u16_tail(const uint8_t* row, int64_t k, int64_t n) {
  alignas(16) uint16_t tmp[8] = {};
  std::memcpy(tmp, row + 2 * k, size_t(n) * 2);
  return _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
}

// ---- Weight formats: 8 consecutive weights of a row as f32 -----------------------------------

struct F32Weights {
  static constexpr int64_t kBytes = 4;
  static __m256 load(const uint8_t* row, int64_t k) { return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k); }
  static __m256 load(const uint8_t* row, int64_t k, int64_t n) {
    return _mm256_maskload_ps(reinterpret_cast<const float*>(row) + k, first_lanes(n));
  }
};

struct BF16Weights {
  static constexpr int64_t kBytes = 2;
  static __m256 widen(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
  static __m256 load(const uint8_t* row, int64_t k) {
    return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k)));
  }
  static __m256 load(const uint8_t* row, int64_t k, int64_t n) { return widen(load_u16_tail(row, k, n)); }
};

struct F16Weights {
  static constexpr int64_t kBytes = 2;
  static __m256 load(const uint8_t* row, int64_t k) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k)));
  }
  static __m256 load(const uint8_t* row, int64_t k, int64_t n) { return _mm256_cvtph_ps(load_u16_tail(row, k, n)); }
};

inline float block_scale(const uint8_t* block) {
  uint16_t h;
  std::memcpy(&h, block, 2);
  return _cvtsh_ss(h);
}

inline __m128i load8_bytes(const uint8_t* p) { return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)); }

struct Q8Weights {
  static constexpr int64_t kBlockBytes = sizeof(BlockQ8_0);
  // Elements [8j, 8j+8) of the block as f32, unscaled.
  static __m256 integers(const uint8_t* block, int j) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load8_bytes(block + 2 + 8 * j)));
  }
};

struct Q4Weights {
  static constexpr int64_t kBlockBytes = sizeof(BlockQ4_0);
  static __m256 integers(const uint8_t* block, int j) {  // j < 2: low nibbles; j >= 2: high nibbles
    __m256i bytes = _mm256_cvtepu8_epi32(load8_bytes(block + 2 + 8 * (j & 1)));
    if (j >= 2) bytes = _mm256_srli_epi32(bytes, 4);
    bytes = _mm256_sub_epi32(_mm256_and_si256(bytes, _mm256_set1_epi32(0xf)), _mm256_set1_epi32(8));
    return _mm256_cvtepi32_ps(bytes);
  }
};

template <class W>
struct QuantLoad {  // the 8 weights starting at k (a multiple of 8), scaled
  static __m256 load(const uint8_t* row, int64_t k) {
    const uint8_t* block = row + k / 32 * W::kBlockBytes;
    return _mm256_mul_ps(W::integers(block, int(k % 32 / 8)), _mm256_set1_ps(block_scale(block)));
  }
};

// ---- Decode: one weight row at a time, against M activation vectors -----------------------
// Rows in memory order, one sequential stream per thread (see matmul_avx512.cpp).

template <int M>
constexpr int kChains = M == 1 ? 4 : 2;

constexpr int64_t kPrefetchBytes = 4096;

inline void prefetch(const uint8_t* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }

template <int M>
inline void store_dots(__m256 (&acc)[M][kChains<M>], float* y, int64_t N, bool accumulate) {
  for (int m = 0; m < M; ++m) {
    __m256 s = acc[m][0];
    for (int a = 1; a < kChains<M>; ++a) s = _mm256_add_ps(s, acc[m][a]);
    const float v = reduce_add(s);
    y[m * N] = accumulate ? y[m * N] + v : v;
  }
}

template <class W, int M>
void dot_row_float(const float* x, int64_t K, const uint8_t* row, float* y, int64_t N, bool accumulate) {
  constexpr int A = kChains<M>;
  constexpr int64_t kStep = 8 * A, kStepBytes = kStep * W::kBytes;
  __m256 acc[M][A];
  for (auto& a : acc)
    for (auto& c : a) c = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + kStep <= K; k += kStep) {
    for (int64_t line = 0; line < kStepBytes; line += 64) prefetch(row + W::kBytes * k + line + kPrefetchBytes);
    __m256 wv[A];
    for (int a = 0; a < A; ++a) wv[a] = W::load(row, k + 8 * a);
    for (int m = 0; m < M; ++m)
      for (int a = 0; a < A; ++a) acc[m][a] = _mm256_fmadd_ps(wv[a], _mm256_loadu_ps(x + m * K + k + 8 * a), acc[m][a]);
  }
  for (; k < K; k += 8) {  // the last columns
    const int64_t n = std::min<int64_t>(8, K - k);
    const __m256 wv = n == 8 ? W::load(row, k) : W::load(row, k, n);
    const __m256i mask = first_lanes(n);
    for (int m = 0; m < M; ++m) acc[m][0] = _mm256_fmadd_ps(wv, _mm256_maskload_ps(x + m * K + k, mask), acc[m][0]);
  }
  store_dots<M>(acc, y, N, accumulate);
}

template <class W, int M>
void dot_row_quant(const float* x, int64_t K, const uint8_t* row, float* y, int64_t N, bool accumulate) {
  constexpr int A = kChains<M>;
  __m256 acc[M][A];
  for (auto& a : acc)
    for (auto& c : a) c = _mm256_setzero_ps();
  auto block_step = [&]<int chain>(int64_t b) {
    const uint8_t* block = row + b * W::kBlockBytes;
    prefetch(block + kPrefetchBytes);
    const __m256 d = _mm256_set1_ps(block_scale(block));
    const __m256 q0 = W::integers(block, 0), q1 = W::integers(block, 1), q2 = W::integers(block, 2),
                 q3 = W::integers(block, 3);
    for (int m = 0; m < M; ++m) {
      const float* xb = x + m * K + 32 * b;
      __m256 t = _mm256_mul_ps(q0, _mm256_loadu_ps(xb));
      t = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xb + 8), t);
      t = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xb + 16), t);
      t = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xb + 24), t);
      acc[m][chain] = _mm256_fmadd_ps(t, d, acc[m][chain]);
    }
  };
  const int64_t blocks = K / 32;
  int64_t b = 0;
  for (; b + A <= blocks; b += A)
    [&]<int... a>(std::integer_sequence<int, a...>) { (block_step.template operator()<a>(b + a), ...); }(
        std::make_integer_sequence<int, A>{});
  for (; b < blocks; ++b) block_step.template operator()<0>(b);
  store_dots<M>(acc, y, N, accumulate);
}

template <class W, bool kQuant, int M>
void gemv_rows(const float* x, const WeightMatrix& w, int64_t n0, int64_t n1, float* y, bool accumulate) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.data + n * w.row_stride;
    if constexpr (kQuant) dot_row_quant<W, M>(x, w.cols, row, y + n, w.rows, accumulate);
    else dot_row_float<W, M>(x, w.cols, row, y + n, w.rows, accumulate);
  }
}

template <class W, bool kQuant>
void gemv_dtype(const float* x, int64_t M, const WeightMatrix& w, int64_t n0, int64_t n1, float* y, bool accumulate) {
  static_assert(kMaxDecodeRows == 4);
  switch (M) {
    case 1: return gemv_rows<W, kQuant, 1>(x, w, n0, n1, y, accumulate);
    case 2: return gemv_rows<W, kQuant, 2>(x, w, n0, n1, y, accumulate);
    case 3: return gemv_rows<W, kQuant, 3>(x, w, n0, n1, y, accumulate);
    default: return gemv_rows<W, kQuant, 4>(x, w, n0, n1, y, accumulate);
  }
}

void gemv(const float* x, int64_t M, const WeightMatrix& w, int64_t n0, int64_t n1, float* y, bool accumulate) {
  switch (w.dtype) {
    case DType::F32: return gemv_dtype<F32Weights, false>(x, M, w, n0, n1, y, accumulate);
    case DType::BF16: return gemv_dtype<BF16Weights, false>(x, M, w, n0, n1, y, accumulate);
    case DType::F16: return gemv_dtype<F16Weights, false>(x, M, w, n0, n1, y, accumulate);
    case DType::Q8_0: return gemv_dtype<Q8Weights, true>(x, M, w, n0, n1, y, accumulate);
    case DType::Q4_0: return gemv_dtype<Q4Weights, true>(x, M, w, n0, n1, y, accumulate);
  }
}

// ---- Packing ---------------------------------------------------------------------------------

inline void transpose8(__m256 (&v)[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  // u[4g + c]: in 128-bit lane L, rows 4g..4g+3 of column 4L + c.
  for (int g = 0; g < 2; ++g) {
    u[4 * g + 0] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
    u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
  }
  for (int c = 0; c < 4; ++c) {
    v[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    v[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}

void pack_activations(const float* x, int64_t ldx, int64_t rows, int64_t kc, float* dst) {
  const __m256i tile_lanes = first_lanes(kTileRows);
  for (int64_t k = 0; k < kc; k += 8) {
    const int64_t n = std::min<int64_t>(8, kc - k);
    const __m256i mask = first_lanes(n);
    __m256 v[8];
    for (int r = 0; r < 8; ++r) v[r] = r < rows ? _mm256_maskload_ps(x + r * ldx + k, mask) : _mm256_setzero_ps();
    transpose8(v);
    for (int64_t j = 0; j < n; ++j) _mm256_maskstore_ps(dst + (k + j) * kTileRows, tile_lanes, v[j]);
  }
}

template <class W, bool kQuant>
void pack_weights_as(const WeightMatrix& w, int64_t n0, int64_t rows, int64_t k0, int64_t kc, float* dst) {
  for (int half = 0; half < 2; ++half) {
    const int64_t r0 = 8 * half;
    const uint8_t* src[8];
    for (int i = 0; i < 8; ++i) src[i] = r0 + i < rows ? w.data + (n0 + r0 + i) * w.row_stride : nullptr;
    for (int64_t k = 0; k < kc; k += 8) {
      __m256 v[8];
      if constexpr (kQuant) {
        for (int i = 0; i < 8; ++i) v[i] = src[i] ? QuantLoad<W>::load(src[i], k0 + k) : _mm256_setzero_ps();
      } else if (k + 8 <= kc) {
        for (int i = 0; i < 8; ++i) v[i] = src[i] ? W::load(src[i], k0 + k) : _mm256_setzero_ps();
      } else {
        for (int i = 0; i < 8; ++i) v[i] = src[i] ? W::load(src[i], k0 + k, kc - k) : _mm256_setzero_ps();
      }
      transpose8(v);
      for (int j = 0; j < 8; ++j) _mm256_store_ps(dst + (k + j) * kPanelWidth + r0, v[j]);
    }
  }
}

void pack_weights(const WeightMatrix& w, int64_t n0, int64_t rows, int64_t k0, int64_t kc, float* dst) {
  switch (w.dtype) {
    case DType::F32: return pack_weights_as<F32Weights, false>(w, n0, rows, k0, kc, dst);
    case DType::BF16: return pack_weights_as<BF16Weights, false>(w, n0, rows, k0, kc, dst);
    case DType::F16: return pack_weights_as<F16Weights, false>(w, n0, rows, k0, kc, dst);
    case DType::Q8_0: return pack_weights_as<Q8Weights, true>(w, n0, rows, k0, kc, dst);
    case DType::Q4_0: return pack_weights_as<Q4Weights, true>(w, n0, rows, k0, kc, dst);
  }
}

// ---- The tile: R rows x 16 features ----------------------------------------------------------

template <int R>
void tile_rows(int64_t kc, const float* xp, const float* wp, float* y, int64_t ldy, int cols, bool add) {
  __m256 c0[R], c1[R];
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(wp), b1 = _mm256_load_ps(wp + 8);
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(xp + r);
      c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
    }
    xp += kTileRows;
    wp += kPanelWidth;
  }
  const __m256i m0 = first_lanes(cols), m1 = first_lanes(cols - 8);
#pragma GCC unroll 8  // keeps the accumulators in registers (a loop would spill them to the stack)
  for (int r = 0; r < R; ++r) {
    float* yr = y + r * ldy;
    if (add) {
      c0[r] = _mm256_add_ps(c0[r], _mm256_maskload_ps(yr, m0));
      c1[r] = _mm256_add_ps(c1[r], _mm256_maskload_ps(yr + 8, m1));
    }
    _mm256_maskstore_ps(yr, m0, c0[r]);
    _mm256_maskstore_ps(yr + 8, m1, c1[r]);
  }
}

template <int... R>
constexpr auto make_tile_table(std::integer_sequence<int, R...>) {
  using Fn = void (*)(int64_t, const float*, const float*, float*, int64_t, int, bool);
  return std::array<Fn, sizeof...(R)>{tile_rows<R + 1>...};
}
constexpr auto kTileByRows = make_tile_table(std::make_integer_sequence<int, kTileRows>{});

void tile(int64_t kc, const float* xp, int rows, const float* wp, int cols, float* y, int64_t ldy, bool add) {
  kTileByRows[size_t(rows - 1)](kc, xp, wp, y, ldy, cols, add);
}

}  // namespace

const Kernels& avx2_kernels() {
  static const Kernels k{kMaxDecodeRows, kTileRows, kPanelWidth, gemv, pack_activations, pack_weights, tile};
  return k;
}

}  // namespace shardlm::matmul_detail
