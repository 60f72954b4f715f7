// Which SIMD instruction sets this CPU and OS support, read once at start-up, so kernels
// built for AVX2 or AVX-512 are only called where they run.
#pragma once
#include <string>

namespace shardlm {

struct CpuFeatures {
  bool avx2 = false;      // with FMA and F16C
  bool avx512 = false;    // F, BW, VL, DQ
  bool avx512_bf16 = false;
  std::string summary() const;
};

const CpuFeatures& cpu_features();

// Level of kernels to use: the best the CPU supports, lowered by SHARDLM_SIMD=scalar|avx2|avx512.
enum class SimdLevel { Scalar, Avx2, Avx512 };
SimdLevel simd_level();
const char* simd_level_name(SimdLevel level);

}  // namespace shardlm
