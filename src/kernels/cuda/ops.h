// The operations of a Llama-family layer on an NVIDIA GPU, callable from plain C++ (no CUDA
// headers here). Every pointer is device memory; activations are f32 [tokens][features] as on
// the CPU (kernels/cpu/ops.h), so the two paths are checked against each other op by op.
// Calls are asynchronous on `stream`; errors of the launch throw shardlm::Error.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/dtype.h"

struct CUstream_st;

namespace shardlm::cuda {

using Stream = CUstream_st*;  // = cudaStream_t

// y[t] = x[t] / rms(x[t]) * weight for n rows of `dim` (y may alias x).
void rmsnorm(const float* x, const float* weight, float* y, int64_t n, int64_t dim, float eps, Stream s);
// Rotates each head of x [n_tokens][n_heads][head_dim] by its token's position (as ops::rope).
void rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq, bool adjacent_pairs, Stream s);
// out = silu(gate) * up (out may alias gate).
void swiglu(const float* gate, const float* up, float* out, int64_t n, Stream s);
// x += y.
void add(float* x, const float* y, int64_t n, Stream s);
// Each of `rows` rows of `cols` logits: its largest value and that value's index (the lowest index
// of equal ones, as a sequential scan keeping strictly larger values).
void argmax_rows(const float* logits, int64_t rows, int64_t cols, float* values, int32_t* indices, Stream s);
// y = x rounded to bf16 (nearest even), as bit patterns.
void to_bf16(const float* x, uint16_t* y, int64_t n, Stream s);
// x = hi + lo in two bf16 parts (hi = bf16(x), lo = bf16(x - hi)): products of bf16 weights with
// both, summed in f32, are within about 1e-5 of the f32 product.
void split_bf16(const float* x, uint16_t* hi, uint16_t* lo, int64_t n, Stream s);
// y (+)= halves[i] + halves[n + i] for i < n.
void add_halves(float* y, const float* halves, int64_t n, bool accumulate, Stream s);

// A weight matrix in device memory, rows of `cols` back to back in any dtype of core/dtype.h (a
// row of a quantized one: cols / 32 blocks).
struct DeviceMatrix {
  DType dtype = DType::F32;
  const void* data = nullptr;
  int64_t rows = 0, cols = 0;
};
// y [M][rows] (+)= x [M][cols] W^T, streaming W once for up to 8 rows of x (a decode step reads
// every weight once); larger M runs in passes of 8. cols: a multiple of 8 (32 when quantized).
void matmul(const float* x, int64_t M, const DeviceMatrix& w, float* y, bool accumulate, Stream s);

// Paged KV cache of one layer: block b of the K pool and of the V pool is
// [local kv head][block_size][head_dim] floats. Token t of a step sits at position pos[t] of its
// sequence, whose block ids start at tables + table_offset[t].
struct KvShape {
  int64_t n_kv_heads = 0, head_dim = 0, block_size = 16;
};
void store_kv(float* k_pool, float* v_pool, const float* k, const float* v, const int32_t* tables,
              const int32_t* table_offset, const int32_t* pos, int64_t n_tokens, KvShape shape, Stream s);

// Causal attention for n_tokens query tokens [n][n_heads][head_dim]: token t sees positions
// 0..pos[t] of its sequence. Local query head h is model head head_offset + h and reads local kv
// head (head_offset + h) / group - kv_head_offset. head_dim: a multiple of 32, at most 256.
struct AttentionShape {
  int64_t n_heads = 0, group = 1, head_offset = 0, kv_head_offset = 0;
  KvShape kv;
};
// Long contexts are split over `splits` blocks per (token, head) (flash-decoding), whose partial
// results need attention_partial_floats() floats of scratch; attention_splits() picks the count
// from the longest position of the step (max_pos) so that the GPU is full.
int64_t attention_splits(int64_t n_tokens, int64_t max_pos, const AttentionShape& shape);
int64_t attention_partial_floats(int64_t n_tokens, int64_t splits, const AttentionShape& shape);
void attention(const float* q, const float* k_pool, const float* v_pool, const int32_t* tables,
               const int32_t* table_offset, const int32_t* pos, int64_t n_tokens, int64_t splits, AttentionShape shape,
               float* partial, float* out, Stream s);

// The pieces of tensor-core attention for a long prompt (tensor_core_gemm.h): keys and values of
// positions [0, length) of one sequence gathered to contiguous [kv head][length][head_dim], and a
// causal softmax in place over score rows [heads][rows][length] whose row r is position
// first_pos + r (keys past it get 0).
void gather_kv(const float* k_pool, const float* v_pool, const int32_t* table, int64_t length, KvShape shape,
               float* k_out, float* v_out, Stream s);
void causal_softmax(float* scores, int64_t heads, int64_t rows, int64_t length, int64_t first_pos, Stream s);

}  // namespace shardlm::cuda

namespace shardlm::cuda {

// The ceiling of a decode step: bytes/s that a kernel reading `bytes` of device memory (and
// writing almost nothing) sustains on `device`, the median of 5 timed passes after a warm-up.
double measure_read_bandwidth(int device, size_t bytes = size_t(2) << 30);
// "NVIDIA H200, 132 SMs, 139.8 GB".
std::string device_name(int device);

}  // namespace shardlm::cuda
