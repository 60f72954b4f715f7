// AVX-512 matmul kernels: matrix-vector products that stream the weights for decode, and the
// packing and 14x32 outer-product tile of the blocked path for prefill.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>

#include "kernels/cpu/matmul.h"

namespace shardlm::matmul_detail {

namespace {

constexpr int kTileRows = 14;    // 14 x 2 accumulators + 2 weight vectors + 1 broadcast of 32 zmm
constexpr int kPanelWidth = 32;  // two zmm of output features per k
constexpr int kMaxDecodeRows = 8;

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// ---- Weight formats: 16 consecutive weights of a row as f32 ----------------------------------
// Float formats load any 16 elements (masked at the end of a row); quantized formats load the
// low or high half of a 32-element block, and also expose the block's parts for decode.

struct F32Weights {
  static constexpr int64_t kBytes = 4;
  static __m512 load(const uint8_t* row, int64_t k) { return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + k); }
  static __m512 load(const uint8_t* row, int64_t k, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + k);
  }
};

struct BF16Weights {
  static constexpr int64_t kBytes = 2;
  // bf16 is the top half of an f32: widen and shift.
  static __m512 widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static __m512 load(const uint8_t* row, int64_t k) {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k)));
  }
  static __m512 load(const uint8_t* row, int64_t k, __mmask16 m) {
    return widen(_mm256_maskz_loadu_epi16(m, row + 2 * k));
  }
};

struct F16Weights {
  static constexpr int64_t kBytes = 2;
  static __m512 load(const uint8_t* row, int64_t k) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k)));
  }
  static __m512 load(const uint8_t* row, int64_t k, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + 2 * k));
  }
};

// The block's f16 scale in every lane: a broadcast load and one conversion, no trip through a
// general-purpose register.
inline __m512 block_scale_vector(const uint8_t* block) {
  uint16_t h;
  __builtin_memcpy(&h, block, 2);
  return _mm512_cvtph_ps(_mm256_set1_epi16(short(h)));
}

struct Q8Weights {
  static constexpr int64_t kBlockBytes = sizeof(BlockQ8_0);
  // The block's 32 integers as f32, unscaled.
  static void integers(const uint8_t* block, __m512& lo, __m512& hi) {
    lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 2))));
    hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 18))));
  }
  static __m512 load(const uint8_t* row, int64_t k) {  // k a multiple of 16
    const uint8_t* block = row + k / 32 * kBlockBytes;
    __m512 q = _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 2 + k % 32))));
    return _mm512_mul_ps(q, block_scale_vector(block));
  }
};

struct Q4Weights {
  static constexpr int64_t kBlockBytes = sizeof(BlockQ4_0);
  // vpermps reads only the low 4 bits of each index: a nibble picks its value (nibble - 8)
  // without masking.
  static __m512 nibble_values(__m512i nibbles) {
    const __m512 table = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    return _mm512_permutexvar_ps(nibbles, table);
  }
  static void integers(const uint8_t* block, __m512& lo, __m512& hi) {
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 2)));
    lo = nibble_values(bytes);
    hi = nibble_values(_mm512_srli_epi32(bytes, 4));
  }
  static __m512 load(const uint8_t* row, int64_t k) {  // k a multiple of 16
    const uint8_t* block = row + k / 32 * kBlockBytes;
    __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 2)));
    if (k % 32) bytes = _mm512_srli_epi32(bytes, 4);
    return _mm512_mul_ps(nibble_values(bytes), block_scale_vector(block));
  }
};

// ---- Decode: R weight rows x M activation vectors at a time --------------------------------
// Up to 4 vectors read one row at a time, so each thread is one sequential stream: the hardware
// prefetchers follow it across pages, while rows 4 KB apart (each its own page) retrain them at
// every page (measured: 20-45% less bandwidth with 2 or 4 rows at a time). From 5 vectors on the
// kernel is bound by activation loads (M*K floats outgrow L1), so 2 rows share each load.
template <int M>
constexpr int kRowsPerStep = M < 5 ? 1 : 2;
// Independent accumulators per (vector, row), so that 4-8 FMA chains cover the FMA latency.
template <int M>
constexpr int kChains = M * kRowsPerStep<M> >= 5 ? 1 : M * kRowsPerStep<M> >= 3 ? 2 : 4;

// Software prefetch this far ahead in the row stream, on top of the hardware prefetchers
// (measured on Zen 5: up to +15% at one thread, neutral at two). Rows taken R > 1 at a time
// prefetch the same columns R rows on, where the next step reads.
constexpr int64_t kPrefetchBytes = 4096;

inline void prefetch(const uint8_t* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }

template <int M, int R, int A>
inline void store_dots(__m512 (&acc)[M][R][A], float* y, int64_t N, bool accumulate) {
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) {
      __m512 s = acc[m][r][0];
      for (int a = 1; a < A; ++a) s = _mm512_add_ps(s, acc[m][r][a]);
      const float v = _mm512_reduce_add_ps(s);
      y[m * N + r] = accumulate ? y[m * N + r] + v : v;
    }
}

template <class W, int M, int R>
void dot_rows_float(const float* x, int64_t K, const uint8_t* w, int64_t stride, float* y, int64_t N,
                    bool accumulate) {
  constexpr int A = kChains<M>;
  constexpr int64_t kStep = 16 * A, kStepBytes = kStep * W::kBytes;
  __m512 acc[M][R][A];
  for (auto& a : acc)
    for (auto& b : a)
      for (auto& c : b) c = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kStep <= K; k += kStep) {
    __m512 wv[R][A];
    for (int r = 0; r < R; ++r) {
      const uint8_t* row = w + r * stride;
      for (int64_t line = 0; line < kStepBytes; line += 64) prefetch(row + W::kBytes * k + line + (R == 1 ? kPrefetchBytes : R * stride));
      for (int a = 0; a < A; ++a) wv[r][a] = W::load(row, k + 16 * a);
    }
    for (int m = 0; m < M; ++m)
      for (int a = 0; a < A; ++a) {
        const __m512 xv = _mm512_loadu_ps(x + m * K + k + 16 * a);
        for (int r = 0; r < R; ++r) acc[m][r][a] = _mm512_fmadd_ps(wv[r][a], xv, acc[m][r][a]);
      }
  }
  for (; k < K; k += 16) {  // the last columns, masked
    const __mmask16 mask = first_lanes(K - k);
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = W::load(w + r * stride, k, mask);
    for (int m = 0; m < M; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * K + k);
      for (int r = 0; r < R; ++r) acc[m][r][0] = _mm512_fmadd_ps(wv[r], xv, acc[m][r][0]);
    }
  }
  store_dots(acc, y, N, accumulate);
}

// Quantized rows: sum q*x over a block in f32, then scale once per block; consecutive blocks
// go to different accumulators.
template <class W, int M, int R>
void dot_rows_quant(const float* x, int64_t K, const uint8_t* w, int64_t stride, float* y, int64_t N,
                    bool accumulate) {
  constexpr int A = kChains<M>;
  __m512 acc[M][R][A];
  for (auto& a : acc)
    for (auto& b : a)
      for (auto& c : b) c = _mm512_setzero_ps();
  auto block_step = [&]<int chain>(int64_t b) {
    __m512 lo[R], hi[R], d[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* block = w + r * stride + b * W::kBlockBytes;
      W::integers(block, lo[r], hi[r]);
      d[r] = block_scale_vector(block);
    }
    for (int m = 0; m < M; ++m) {
      const __m512 xa = _mm512_loadu_ps(x + m * K + 32 * b), xb = _mm512_loadu_ps(x + m * K + 32 * b + 16);
      for (int r = 0; r < R; ++r) {
        const __m512 t = _mm512_fmadd_ps(hi[r], xb, _mm512_mul_ps(lo[r], xa));
        acc[m][r][chain] = _mm512_fmadd_ps(t, d[r], acc[m][r][chain]);
      }
    }
  };
  // One prefetch per cache line of each step's blocks (prefetches take load slots, which bound
  // the quantized kernels).
  auto prefetch_step = [&](int64_t b) {
    for (int r = 0; r < R; ++r)
      for (int64_t off = 0; off < A * W::kBlockBytes; off += 64)
        prefetch(w + r * stride + b * W::kBlockBytes + off + (R == 1 ? kPrefetchBytes : R * stride));
  };
  const int64_t blocks = K / 32;
  int64_t b = 0;
  for (; b + A <= blocks; b += A) {
    prefetch_step(b);
    [&]<int... a>(std::integer_sequence<int, a...>) { (block_step.template operator()<a>(b + a), ...); }(
        std::make_integer_sequence<int, A>{});
  }
  for (; b < blocks; ++b) block_step.template operator()<0>(b);
  store_dots(acc, y, N, accumulate);
}

template <class W, bool kQuant, int M>
void gemv_rows(const float* x, const WeightMatrix& w, int64_t n0, int64_t n1, float* y, bool accumulate) {
  auto rows = [&]<int R>(int64_t n) {
    const uint8_t* first = w.data + n * w.row_stride;
    if constexpr (kQuant) dot_rows_quant<W, M, R>(x, w.cols, first, w.row_stride, y + n, w.rows, accumulate);
    else dot_rows_float<W, M, R>(x, w.cols, first, w.row_stride, y + n, w.rows, accumulate);
  };
  constexpr int R = kRowsPerStep<M>;
  int64_t n = n0;
  for (; n + R <= n1; n += R) rows.template operator()<R>(n);
  for (; n < n1; ++n) rows.template operator()<1>(n);
}

template <class W, bool kQuant>
void gemv_dtype(const float* x, int64_t M, const WeightMatrix& w, int64_t n0, int64_t n1, float* y, bool accumulate) {
  static_assert(kMaxDecodeRows == 8);
  switch (M) {
    case 1: return gemv_rows<W, kQuant, 1>(x, w, n0, n1, y, accumulate);
    case 2: return gemv_rows<W, kQuant, 2>(x, w, n0, n1, y, accumulate);
    case 3: return gemv_rows<W, kQuant, 3>(x, w, n0, n1, y, accumulate);
    case 4: return gemv_rows<W, kQuant, 4>(x, w, n0, n1, y, accumulate);
    case 5: return gemv_rows<W, kQuant, 5>(x, w, n0, n1, y, accumulate);
    case 6: return gemv_rows<W, kQuant, 6>(x, w, n0, n1, y, accumulate);
    case 7: return gemv_rows<W, kQuant, 7>(x, w, n0, n1, y, accumulate);
    default: return gemv_rows<W, kQuant, 8>(x, w, n0, n1, y, accumulate);
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

// In place: v[i] lane j <- v[j] lane i.
inline void transpose16(__m512 (&v)[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  // u[4g + c]: in 128-bit lane L, rows 4g..4g+3 of column 4L + c.
  for (int g = 0; g < 4; ++g) {
    u[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
    u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 p0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), q0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
    const __m512 p1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88),
                 q1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
    v[c] = _mm512_shuffle_f32x4(p0, p1, 0x88);
    v[8 + c] = _mm512_shuffle_f32x4(p0, p1, 0xdd);
    v[4 + c] = _mm512_shuffle_f32x4(q0, q1, 0x88);
    v[12 + c] = _mm512_shuffle_f32x4(q0, q1, 0xdd);
  }
}

void pack_activations(const float* x, int64_t ldx, int64_t rows, int64_t kc, float* dst) {
  constexpr __mmask16 kTileLanes = (1u << kTileRows) - 1;
  for (int64_t k = 0; k < kc; k += 16) {
    const __mmask16 mask = first_lanes(kc - k);
    __m512 v[16];
    for (int r = 0; r < 16; ++r) v[r] = r < rows ? _mm512_maskz_loadu_ps(mask, x + r * ldx + k) : _mm512_setzero_ps();
    transpose16(v);
    const int64_t n = std::min<int64_t>(16, kc - k);
    for (int64_t j = 0; j < n; ++j) _mm512_mask_storeu_ps(dst + (k + j) * kTileRows, kTileLanes, v[j]);
  }
}

template <class W, bool kQuant>
void pack_weights_as(const WeightMatrix& w, int64_t n0, int64_t rows, int64_t k0, int64_t kc, float* dst) {
  for (int half = 0; half < 2; ++half) {
    const int64_t r0 = 16 * half;
    const uint8_t* src[16];
    for (int i = 0; i < 16; ++i) src[i] = r0 + i < rows ? w.data + (n0 + r0 + i) * w.row_stride : nullptr;
    // The next k block of these rows comes from DRAM one block of compute later: ask for it now
    // (into L2), since each row's short run is too short for the hardware prefetchers
    // (measured: +10% at M = 16, neutral at M = 512 where compute hides the latency anyway).
    const int64_t next_begin = dtype_bytes(w.dtype, k0 + kc), next_end = dtype_bytes(w.dtype, std::min(w.cols, k0 + 2 * kc));
    for (int i = 0; i < 16; ++i)
      if (src[i])
        for (int64_t b = next_begin; b < next_end; b += 64) _mm_prefetch(reinterpret_cast<const char*>(src[i] + b), _MM_HINT_T1);
    for (int64_t k = 0; k < kc; k += 16) {
      __m512 v[16];
      if constexpr (kQuant) {  // kc is a multiple of the block: no partial loads
        for (int i = 0; i < 16; ++i) v[i] = src[i] ? W::load(src[i], k0 + k) : _mm512_setzero_ps();
      } else if (k + 16 <= kc) {
        for (int i = 0; i < 16; ++i) v[i] = src[i] ? W::load(src[i], k0 + k) : _mm512_setzero_ps();
      } else {
        const __mmask16 mask = first_lanes(kc - k);
        for (int i = 0; i < 16; ++i) v[i] = src[i] ? W::load(src[i], k0 + k, mask) : _mm512_setzero_ps();
      }
      transpose16(v);
      // Whole vectors even past kc: the panel has room for kc rounded up to 16.
      for (int j = 0; j < 16; ++j) _mm512_store_ps(dst + (k + j) * kPanelWidth + r0, v[j]);
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

// ---- The tile: R rows x 32 features, outer products over k --------------------------------

template <int R>
void tile_rows(int64_t kc, const float* xp, const float* wp, float* y, int64_t ldy, int cols, bool add) {
  __m512 c0[R], c1[R];
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(wp), b1 = _mm512_load_ps(wp + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(xp[r]);
      c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
    }
    xp += kTileRows;
    wp += kPanelWidth;
  }
  const __mmask16 m0 = first_lanes(cols), m1 = first_lanes(cols - 16);
#pragma GCC unroll 16  // keeps the accumulators in registers (a loop would spill them to the stack)
  for (int r = 0; r < R; ++r) {
    float* yr = y + r * ldy;
    if (add) {
      c0[r] = _mm512_add_ps(c0[r], _mm512_maskz_loadu_ps(m0, yr));
      c1[r] = _mm512_add_ps(c1[r], _mm512_maskz_loadu_ps(m1, yr + 16));
    }
    _mm512_mask_storeu_ps(yr, m0, c0[r]);
    _mm512_mask_storeu_ps(yr + 16, m1, c1[r]);
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

const Kernels& avx512_kernels() {
  static const Kernels k{kMaxDecodeRows, kTileRows, kPanelWidth, gemv, pack_activations, pack_weights, tile};
  return k;
}

}  // namespace shardlm::matmul_detail
