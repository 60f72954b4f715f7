// Small f32 vector primitives used by attention and norms, with AVX2/AVX-512 versions picked
// once at start-up.
#pragma once
#include <cstdint>

namespace shardlm::vec {

float dot(const float* a, const float* b, int64_t n);
// y += a * x
void axpy(float a, const float* x, float* y, int64_t n);
// sum of squares
float sum_squares(const float* x, int64_t n);

// Per-level implementations (called by the dispatchers above; exposed for tests).
namespace scalar {
float dot(const float* a, const float* b, int64_t n);
void axpy(float a, const float* x, float* y, int64_t n);
float sum_squares(const float* x, int64_t n);
}  // namespace scalar
namespace avx2 {
float dot(const float* a, const float* b, int64_t n);
void axpy(float a, const float* x, float* y, int64_t n);
float sum_squares(const float* x, int64_t n);
}  // namespace avx2
namespace avx512 {
float dot(const float* a, const float* b, int64_t n);
void axpy(float a, const float* x, float* y, int64_t n);
float sum_squares(const float* x, int64_t n);
}  // namespace avx512

}  // namespace shardlm::vec
