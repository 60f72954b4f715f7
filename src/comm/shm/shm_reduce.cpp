#include "comm/shm/shm_reduce.h"

#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/cpu_features.h"
#include "core/dtype.h"

namespace shardlm::comm::shm {

namespace {

// Plain SSE2 (the x86-64 baseline), no dispatch: the sums are bound by moving the slots between
// cores, not by arithmetic. f32 uses GCC/Clang vector types, which also build elsewhere.
typedef float v4f __attribute__((vector_size(16)));
template <class V, class T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V, class T>
inline void store(T* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

}  // namespace

void sum_f32(float* out, const float* const* src, int n_src, size_t count) {
  size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    v4f a = load<v4f>(src[0] + i), b = load<v4f>(src[0] + i + 4);
    v4f c = load<v4f>(src[0] + i + 8), d = load<v4f>(src[0] + i + 12);
    for (int s = 1; s < n_src; ++s) {
      a += load<v4f>(src[s] + i);
      b += load<v4f>(src[s] + i + 4);
      c += load<v4f>(src[s] + i + 8);
      d += load<v4f>(src[s] + i + 12);
    }
    store(out + i, a);
    store(out + i + 4, b);
    store(out + i + 8, c);
    store(out + i + 12, d);
  }
  for (; i < count; ++i) {
    float a = src[0][i];
    for (int s = 1; s < n_src; ++s) a += src[s][i];
    out[i] = a;
  }
}

namespace {

void sum_bf16_scalar(uint16_t* out, const uint16_t* const* src, int n_src, size_t from, size_t count) {
  for (size_t i = from; i < count; ++i) {
    float a = bf16_to_f32(src[0][i]);
    for (int s = 1; s < n_src; ++s) a += bf16_to_f32(src[s][i]);
    out[i] = f32_to_bf16(a);
  }
}

#if defined(__x86_64__)
// bf16 -> f32 is the 16 bits above 16 zero bits: an interleave with zero. f32 -> bf16 follows
// f32_to_bf16 exactly: the rounded value forms in the high half of each 32-bit lane, and an
// arithmetic shift right makes packs_epi32 exact. Interleave and pack both work within 128-bit
// lanes, so together they keep the element order in the 256-bit version too.

inline __m128i bf16_high_half_sse2(__m128 f) {
  const __m128i u = _mm_castps_si128(f);
  const __m128i lsb = _mm_and_si128(_mm_srli_epi32(u, 16), _mm_set1_epi32(1));
  const __m128i rounded = _mm_add_epi32(u, _mm_add_epi32(_mm_set1_epi32(0x7fff), lsb));
  const __m128i quiet_nan = _mm_or_si128(u, _mm_set1_epi32(0x00400000));
  const __m128i is_nan = _mm_cmpgt_epi32(_mm_and_si128(u, _mm_set1_epi32(0x7fffffff)), _mm_set1_epi32(0x7f800000));
  return _mm_srai_epi32(_mm_or_si128(_mm_and_si128(is_nan, quiet_nan), _mm_andnot_si128(is_nan, rounded)), 16);
}

void sum_bf16_sse2(uint16_t* out, const uint16_t* const* src, int n_src, size_t count) {
  const __m128i zero = _mm_setzero_si128();
  size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src[0] + i));
    __m128 lo = _mm_castsi128_ps(_mm_unpacklo_epi16(zero, h)), hi = _mm_castsi128_ps(_mm_unpackhi_epi16(zero, h));
    for (int s = 1; s < n_src; ++s) {
      h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src[s] + i));
      lo = _mm_add_ps(lo, _mm_castsi128_ps(_mm_unpacklo_epi16(zero, h)));
      hi = _mm_add_ps(hi, _mm_castsi128_ps(_mm_unpackhi_epi16(zero, h)));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm_packs_epi32(bf16_high_half_sse2(lo), bf16_high_half_sse2(hi)));
  }
  sum_bf16_scalar(out, src, n_src, i, count);
}

__attribute__((target("avx2"))) inline __m256i bf16_high_half_avx2(__m256 f) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb));
  const __m256i quiet_nan = _mm256_or_si256(u, _mm256_set1_epi32(0x00400000));
  const __m256i is_nan =
      _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
  return _mm256_srai_epi32(_mm256_blendv_epi8(rounded, quiet_nan, is_nan), 16);
}

__attribute__((target("avx2"))) void sum_bf16_avx2(uint16_t* out, const uint16_t* const* src, int n_src, size_t count) {
  const __m256i zero = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src[0] + i));
    __m256 lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, h));
    __m256 hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, h));
    for (int s = 1; s < n_src; ++s) {
      h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src[s] + i));
      lo = _mm256_add_ps(lo, _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, h)));
      hi = _mm256_add_ps(hi, _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, h)));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm256_packs_epi32(bf16_high_half_avx2(lo), bf16_high_half_avx2(hi)));
  }
  sum_bf16_scalar(out, src, n_src, i, count);
}
#endif

}  // namespace

void sum_bf16(uint16_t* out, const uint16_t* const* src, int n_src, size_t count) {
#if defined(__x86_64__)
  static const bool avx2 = simd_level() >= SimdLevel::Avx2;
  if (avx2) return sum_bf16_avx2(out, src, n_src, count);
  return sum_bf16_sse2(out, src, n_src, count);
#else
  sum_bf16_scalar(out, src, n_src, 0, count);
#endif
}

}  // namespace shardlm::comm::shm
