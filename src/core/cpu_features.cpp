#include "core/cpu_features.h"

#include <cpuid.h>

#include <cstdlib>
#include <cstring>
#include <fmt/format.h>

#include "core/error.h"

namespace shardlm {

namespace {
uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  bool osxsave = c & bit_OSXSAVE, fma = c & bit_FMA, f16c = c & bit_F16C, avx = c & bit_AVX;
  if (!osxsave || !avx) return f;
  uint64_t xcr0 = xgetbv0();
  bool ymm_state = (xcr0 & 0x6) == 0x6;
  bool zmm_state = (xcr0 & 0xe6) == 0xe6;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = ymm_state && (b & bit_AVX2) && fma && f16c;
  f.avx512 = f.avx2 && zmm_state && (b & bit_AVX512F) && (b & bit_AVX512BW) && (b & bit_AVX512VL) &&
             (b & bit_AVX512DQ);
  __cpuid_count(7, 1, a, b, c, d);
  f.avx512_bf16 = f.avx512 && (a & (1u << 5));
  return f;
}
}  // namespace

std::string CpuFeatures::summary() const {
  return fmt::format("avx2={} avx512={} avx512_bf16={}", avx2, avx512, avx512_bf16);
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

SimdLevel simd_level() {
  static const SimdLevel level = [] {
    const CpuFeatures& f = cpu_features();
    SimdLevel best = f.avx512 ? SimdLevel::Avx512 : f.avx2 ? SimdLevel::Avx2 : SimdLevel::Scalar;
    const char* env = std::getenv("SHARDLM_SIMD");
    if (!env || !*env) return best;
    SimdLevel want;
    if (!std::strcmp(env, "scalar")) want = SimdLevel::Scalar;
    else if (!std::strcmp(env, "avx2")) want = SimdLevel::Avx2;
    else if (!std::strcmp(env, "avx512")) want = SimdLevel::Avx512;
    else fail("SHARDLM_SIMD='{}': expected scalar, avx2 or avx512", env);
    if (int(want) > int(best)) fail("SHARDLM_SIMD={}: this CPU does not support it", env);
    return want;
  }();
  return level;
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Scalar: return "scalar";
    case SimdLevel::Avx2: return "avx2";
    case SimdLevel::Avx512: return "avx512";
  }
  return "?";
}

}  // namespace shardlm
