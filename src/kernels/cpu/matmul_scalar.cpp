// Baseline x86-64 kernels: plain loops for CPUs without AVX2, and the reference the
// vectorized levels are tested against besides matmul_reference.
#include <algorithm>
#include <vector>

#include "kernels/cpu/matmul.h"

namespace shardlm::matmul_detail {

namespace {

constexpr int kTileRows = 4;
constexpr int kPanelWidth = 8;

void gemv(const float* x, int64_t M, const WeightMatrix& w, int64_t n0, int64_t n1, float* y, bool accumulate) {
  const int64_t N = w.rows, K = w.cols;
  std::vector<float> row(static_cast<size_t>(K));
  for (int64_t n = n0; n < n1; ++n) {
    to_f32(w.dtype, w.data + n * w.row_stride, row.data(), K);
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * K;
      float s[4] = {};  // four partial sums: shorter rounding chains than one
      int64_t k = 0;
      for (; k + 4 <= K; k += 4)
        for (int j = 0; j < 4; ++j) s[j] += xm[k + j] * row[size_t(k + j)];
      for (; k < K; ++k) s[0] += xm[k] * row[size_t(k)];
      const float sum = (s[0] + s[1]) + (s[2] + s[3]);
      y[m * N + n] = accumulate ? y[m * N + n] + sum : sum;
    }
  }
}

void pack_activations(const float* x, int64_t ldx, int64_t rows, int64_t kc, float* dst) {
  for (int64_t k = 0; k < kc; ++k)
    for (int64_t r = 0; r < kTileRows; ++r) dst[k * kTileRows + r] = r < rows ? x[r * ldx + k] : 0.0f;
}

void pack_weights(const WeightMatrix& w, int64_t n0, int64_t rows, int64_t k0, int64_t kc, float* dst) {
  std::fill(dst, dst + kc * kPanelWidth, 0.0f);
  float row[kPackStep];
  // k0 is a multiple of the quantization block, so each step converts whole blocks.
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* src = w.data + (n0 + r) * w.row_stride;
    for (int64_t k = 0; k < kc; k += kPackStep) {
      const int64_t n = std::min(kPackStep, kc - k);
      to_f32(w.dtype, src + dtype_bytes(w.dtype, k0 + k), row, n);
      for (int64_t j = 0; j < n; ++j) dst[(k + j) * kPanelWidth + r] = row[j];
    }
  }
}

void tile(int64_t kc, const float* xp, int rows, const float* wp, int cols, float* y, int64_t ldy, bool add) {
  float acc[kTileRows][kPanelWidth] = {};
  for (int64_t k = 0; k < kc; ++k)
    for (int r = 0; r < kTileRows; ++r)
      for (int c = 0; c < kPanelWidth; ++c) acc[r][c] += xp[k * kTileRows + r] * wp[k * kPanelWidth + c];
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) y[r * ldy + c] = add ? y[r * ldy + c] + acc[r][c] : acc[r][c];
}

}  // namespace

const Kernels& scalar_kernels() {
  static const Kernels k{/*max_decode_rows=*/1, kTileRows, kPanelWidth, gemv, pack_activations, pack_weights, tile};
  return k;
}

}  // namespace shardlm::matmul_detail
