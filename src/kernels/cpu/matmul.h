// Matrix products of f32 activations with weights of any dtype, the bulk of every forward pass.
// Weights stay in their stored dtype and layout (PyTorch Linear: rows = output features,
// each row the input features), read straight from the mapped file.
#pragma once
#include <cstdint>
#include <initializer_list>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/thread_pool.h"

namespace shardlm {

struct WeightMatrix {
  DType dtype = DType::F32;
  const uint8_t* data = nullptr;  // row 0
  int64_t rows = 0;               // N: output features
  int64_t cols = 0;               // K: input features (a multiple of 32 for q8_0/q4_0)
  int64_t row_stride = 0;         // bytes from one row to the next; > row bytes for a column slice
};

// y[m*N + n] (+)= sum_k x[m*K + k] * W[n][k] for m < M, n < N.
// Small M (decode; up to 8 rows with AVX-512, 4 with AVX2) streams the weights once as
// matrix-vector products, each thread one contiguous range of rows; larger M (prefill) converts
// weight panels to f32 and runs a cache-blocked matrix-matrix kernel, each thread its own range
// of output features. Accumulation is f32 throughout, activations are never rounded.
// accumulate = true adds into y (used to fuse the residual add). Throws Error for a bad matrix.
void matmul(ThreadPool& pool, const float* x, int64_t M, const WeightMatrix& w, float* y,
            bool accumulate = false);

// Several products of the same activations (q, k and v; gate and up): y_i = x W_i^T. Decode runs
// them in one parallel region, which matters when each is only a few MB.
struct MatmulJob {
  const WeightMatrix* w;
  float* y;
};
void matmul_same_input(ThreadPool& pool, const float* x, int64_t M, std::initializer_list<MatmulJob> jobs);

// Plain scalar reference (double accumulation), for tests.
void matmul_reference(const float* x, int64_t M, const WeightMatrix& w, float* y);

// Which algorithm runs: Auto picks by M (the matrix-vector path up to the level's
// max_decode_rows); the others force one, for tests and for measuring where the switch belongs.
// A forced Decode with larger M streams the weights once per max_decode_rows rows.
enum class MatmulPath { Auto, Decode, Packed };

// matmul() with the kernels of one SIMD level (which the CPU must support), so tests and
// benchmarks can run every level; matmul() itself uses simd_level() and MatmulPath::Auto.
void matmul_at_level(SimdLevel level, ThreadPool& pool, const float* x, int64_t M, const WeightMatrix& w,
                     float* y, bool accumulate = false, MatmulPath path = MatmulPath::Auto);

// Throws Error unless `w` describes a readable matrix: dtype block size divides cols, rows/cols
// not negative, row_stride covers a row, data present.
void check_weight_matrix(const WeightMatrix& w);

// The pieces each SIMD level provides (matmul_<level>.cpp). matmul.cpp owns the threading and
// cache blocking, shared by all levels, and calls these through one table per level.
namespace matmul_detail {

struct Kernels {
  // Largest M served by the matrix-vector path; larger M packs and runs tiles.
  int max_decode_rows;
  int tile_rows;    // MR: activation rows per micro-kernel call
  int panel_width;  // NR: output features per packed weight panel
  // Decode: y[m*N + n] (+)= x[m*K ..] . W[n] for m < M <= max_decode_rows and n in [n0, n1).
  void (*gemv)(const float* x, int64_t M, const WeightMatrix& w, int64_t n0, int64_t n1, float* y,
               bool accumulate);
  // Activation tile: columns [0, kc) of rows (<= tile_rows) of x, ldx floats apart, stored
  // k-major: dst[k*tile_rows + r], rows past `rows` zero.
  void (*pack_activations)(const float* x, int64_t ldx, int64_t rows, int64_t kc, float* dst);
  // Weight panel: W rows [n0, n0+rows) (rows <= panel_width), columns [k0, k0+kc), as f32,
  // k-major: dst[k*panel_width + r], rows past `rows` zero. k0 and kc are multiples of
  // kPackStep except a final kc that reaches K. dst is 64-byte aligned with room for kc rounded
  // up to 16 (packers may store whole vectors past kc).
  void (*pack_weights)(const WeightMatrix& w, int64_t n0, int64_t rows, int64_t k0, int64_t kc, float* dst);
  // y[r*ldy + c] (+)= sum_k xp[k*tile_rows + r] * wp[k*panel_width + c] for r < rows, c < cols.
  void (*tile)(int64_t kc, const float* xp, int rows, const float* wp, int cols, float* y, int64_t ldy,
               bool add);
};

// k blocks of the packed path start at multiples of this (a quantization block).
constexpr int64_t kPackStep = 32;

const Kernels& scalar_kernels();
const Kernels& avx2_kernels();
const Kernels& avx512_kernels();

}  // namespace matmul_detail

}  // namespace shardlm
