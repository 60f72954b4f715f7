#include "kernels/cpu/vec.h"

#include "core/cpu_features.h"

namespace shardlm::vec {

namespace scalar {
float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
void axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
float sum_squares(const float* x, int64_t n) { return dot(x, x, n); }
}  // namespace scalar

namespace {
struct Table {
  float (*dot)(const float*, const float*, int64_t);
  void (*axpy)(float, const float*, float*, int64_t);
  float (*sum_squares)(const float*, int64_t);
};
const Table& table() {
  static const Table t = [] {
    switch (simd_level()) {
      case SimdLevel::Avx512: return Table{avx512::dot, avx512::axpy, avx512::sum_squares};
      case SimdLevel::Avx2: return Table{avx2::dot, avx2::axpy, avx2::sum_squares};
      default: return Table{scalar::dot, scalar::axpy, scalar::sum_squares};
    }
  }();
  return t;
}
}  // namespace

float dot(const float* a, const float* b, int64_t n) { return table().dot(a, b, n); }
void axpy(float a, const float* x, float* y, int64_t n) { table().axpy(a, x, y, n); }
float sum_squares(const float* x, int64_t n) { return table().sum_squares(x, n); }

}  // namespace shardlm::vec
