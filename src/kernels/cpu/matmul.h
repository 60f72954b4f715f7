// Matrix products of f32 activations with weights of any dtype, the bulk of every forward pass.
// Weights stay in their stored dtype and layout (PyTorch Linear: rows = output features,
// each row the input features), read straight from the mapped file.
#pragma once
#include <cstdint>

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
// M == 1 (decode) streams the weights once as matrix-vector products; M > 1 (prefill) converts
// weight panels to f32 and runs a cache-blocked matrix-matrix kernel. All threads of `pool` work.
// accumulate = true adds into y (used to fuse the residual add).
void matmul(ThreadPool& pool, const float* x, int64_t M, const WeightMatrix& w, float* y,
            bool accumulate = false);

// Plain scalar reference (double accumulation), for tests.
void matmul_reference(const float* x, int64_t M, const WeightMatrix& w, float* y);

}  // namespace shardlm
