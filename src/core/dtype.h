// Element types of weights and activations, and the scalar conversions between them.
// Block-quantized types (q8_0, q4_0) use GGUF's exact byte layout so GGUF tensors are used as-is.
#pragma once
#include <bit>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace shardlm {

enum class DType : uint8_t { F32, F16, BF16, Q8_0, Q4_0 };

std::string_view dtype_name(DType t);
// Parses "f32", "bf16", "q8_0"...; throws Error naming the text otherwise.
DType parse_dtype(std::string_view name);

// Quantized types store blocks of 32 elements; float types have blocks of 1.
constexpr int64_t kQuantBlock = 32;
constexpr int64_t dtype_block_elems(DType t) {
  return (t == DType::Q8_0 || t == DType::Q4_0) ? kQuantBlock : 1;
}
constexpr int64_t dtype_block_bytes(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::Q8_0: return 2 + 32;
    case DType::Q4_0: return 2 + 16;
  }
  return 0;
}
// Bytes of n elements; n must be a multiple of the block size (checked by callers on input).
constexpr int64_t dtype_bytes(DType t, int64_t n) {
  return n / dtype_block_elems(t) * dtype_block_bytes(t);
}

// GGUF block layouts.
struct BlockQ8_0 {
  uint16_t scale_f16;
  int8_t q[32];
};
struct BlockQ4_0 {
  uint16_t scale_f16;
  uint8_t q[16];  // element j in low nibble of q[j], element j+16 in the high nibble; value = (nibble-8)*scale
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18);

inline float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }
// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements of `src` (any dtype) to f32. Scalar reference used by loaders and tests;
// the hot paths live in kernels/cpu.
void to_f32(DType t, const void* src, float* dst, int64_t n);
// Quantizes/converts n f32 values into dtype `t` (n a multiple of the block size).
void from_f32(DType t, const float* src, void* dst, int64_t n);

}  // namespace shardlm
