// Rounding to the tensor cores' 16-bit types on the device, shared by the kernels that write them
// (activations for cuBLAS, widened weights).
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

#include "core/dtype.h"

namespace shardlm::cuda::detail {

// Round to nearest even, as core/dtype's f32_to_bf16.
__device__ __forceinline__ uint16_t round_to_bf16(float v) {
  const uint32_t b = __float_as_uint(v);
  return uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// The two 16-bit types as bit patterns: round(f32) to nearest even, and back to f32 exactly.
struct Bf16Bits {
  __device__ static uint16_t round(float v) { return round_to_bf16(v); }
  __device__ static float widen(uint16_t h) { return __uint_as_float(uint32_t(h) << 16); }
};
struct F16Bits {
  __device__ static uint16_t round(float v) { return __half_as_ushort(__float2half_rn(v)); }
  __device__ static float widen(uint16_t h) { return __half2float(__ushort_as_half(h)); }
};
// Calls f with the bits type of `half` (F16: F16Bits, otherwise BF16: Bf16Bits).
template <class F>
void with_half_bits(DType half, F&& f) {
  if (half == DType::F16) f(F16Bits{});
  else f(Bf16Bits{});
}

}  // namespace shardlm::cuda::detail
