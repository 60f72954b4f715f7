#include "core/dtype.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace shardlm {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::Q8_0: return "q8_0";
    case DType::Q4_0: return "q4_0";
  }
  return "?";
}

DType parse_dtype(std::string_view name) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0})
    if (dtype_name(t) == name) return t;
  fail("unknown dtype '{}' (expected f32, f16, bf16, q8_0 or q4_0)", name);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: value = mant * 2^-24
    float v = std::ldexp(float(mant), -24);
    return sign ? -v : v;
  }
  return std::bit_cast<float>(bits);
}

uint16_t f32_to_f16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00;            // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00;           // rounds to inf
  if (abs < 0x38800000u) {                                // subnormal or zero in f16
    float a = std::bit_cast<float>(abs);
    return sign | uint16_t(std::nearbyint(a * 16777216.0f));  // a / 2^-24, ties to even
  }
  // Normal: rebias exponent, round mantissa to nearest even.
  uint32_t r = abs - 0x38000000u;  // exponent bias 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  return sign | uint16_t(r >> 13);
}

void to_f32(DType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case DType::F16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::BF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::Q8_0: {
      auto* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < n / 32; ++i) {
        float d = f16_to_f32(b[i].scale_f16);
        for (int j = 0; j < 32; ++j) dst[i * 32 + j] = d * float(b[i].q[j]);
      }
      return;
    }
    case DType::Q4_0: {
      auto* b = static_cast<const BlockQ4_0*>(src);
      for (int64_t i = 0; i < n / 32; ++i) {
        float d = f16_to_f32(b[i].scale_f16);
        for (int j = 0; j < 16; ++j) {
          dst[i * 32 + j] = d * float(int(b[i].q[j] & 0xf) - 8);
          dst[i * 32 + j + 16] = d * float(int(b[i].q[j] >> 4) - 8);
        }
      }
      return;
    }
  }
}

void from_f32(DType t, const float* src, void* dst, int64_t n) {
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case DType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::Q8_0: {  // same rounding as llama.cpp's reference quantizer: d = amax/127
      auto* b = static_cast<BlockQ8_0*>(dst);
      for (int64_t i = 0; i < n / 32; ++i) {
        const float* x = src + i * 32;
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
        float d = amax / 127.0f;
        float id = d != 0 ? 1.0f / d : 0.0f;
        b[i].scale_f16 = f32_to_f16(d);
        for (int j = 0; j < 32; ++j) b[i].q[j] = int8_t(std::lround(x[j] * id));
      }
      return;
    }
    case DType::Q4_0: {  // llama.cpp's reference: d = max/-8 (signed value of largest magnitude)
      auto* b = static_cast<BlockQ4_0*>(dst);
      for (int64_t i = 0; i < n / 32; ++i) {
        const float* x = src + i * 32;
        float amax = 0, maxv = 0;
        for (int j = 0; j < 32; ++j)
          if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), maxv = x[j];
        float d = maxv / -8.0f;
        float id = d != 0 ? 1.0f / d : 0.0f;
        b[i].scale_f16 = f32_to_f16(d);
        for (int j = 0; j < 16; ++j) {
          int lo = std::min(15, int(x[j] * id + 8.5f));
          int hi = std::min(15, int(x[j + 16] * id + 8.5f));
          b[i].q[j] = uint8_t(lo | (hi << 4));
        }
      }
      return;
    }
  }
}

}  // namespace shardlm
