// The operations of a Llama-family layer on an NVIDIA GPU, callable from plain C++ (no CUDA
// headers here). Every pointer is device memory; activations are f32 [tokens][features] as on
// the CPU (kernels/cpu/ops.h), so the two paths are checked against each other op by op.
// Calls are asynchronous on `stream`; errors of the launch throw shardlm::Error.
#pragma once
#include <bit>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"

struct CUstream_st;

namespace shardlm::cuda {

using Stream = CUstream_st*;  // = cudaStream_t

// y[t] = x[t] / rms(x[t]) * weight for n rows of `dim` (y may alias x).
void rmsnorm(const float* x, const float* weight, float* y, int64_t n, int64_t dim, float eps, Stream s);
// The same rounded to `half` (BF16 or F16): the next tensor-core product's input, made directly.
void rmsnorm(const float* x, const float* weight, uint16_t* y, int64_t n, int64_t dim, float eps, DType half, Stream s);
// x += y.
void add(float* x, const float* y, int64_t n, Stream s);
// Each of `rows` rows of `cols` logits: its largest value and that value's index (the lowest index
// of equal ones, as a sequential scan keeping strictly larger values; NaN never wins), packed into
// one key a row so that the blocks of a row meet by atomicMax: the value's bits made to order as
// unsigned (high word), then ~index (low word: lower indices win ties). A row of NaN gets key 0.
void argmax_rows(const float* logits, int64_t rows, int64_t cols, uint64_t* keys, Stream s);
inline void decode_argmax_key(uint64_t key, float* value, int32_t* index) {
  if (key == 0) {
    *value = -std::numeric_limits<float>::infinity(), *index = 0;
    return;
  }
  const uint32_t ordered = uint32_t(key >> 32);
  *value = std::bit_cast<float>(ordered & 0x80000000u ? ordered & 0x7fffffffu : ~ordered);
  *index = int32_t(~uint32_t(key));
}
// y = x rounded to `half` (BF16 or F16, nearest even), as bit patterns.
void to_half(const float* x, uint16_t* y, int64_t n, DType half, Stream s);
// x = hi + lo in two parts of `half` (hi = half(x), lo = half(x - hi)): products of 16-bit weights
// with both, summed in f32, are within about 1e-5 (bf16) or 1e-7 (f16) of the f32 product.
void split_half(const float* x, uint16_t* hi, uint16_t* lo, int64_t n, DType half, Stream s);
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
// The same product written to up to three arrays: W's rows stacked (q, k and v's in one matrix,
// one launch for the three), part p taking the next parts[p].rows output columns as its own
// [M][rows] array. With swiglu, W's rows are (gate, up) pairs and its one part [M][rows / 2]
// gets silu(gate) * up.
struct MatmulPart {
  float* y = nullptr;
  int64_t rows = 0;
};
struct MatmulOutput {
  std::span<const MatmulPart> parts;
  bool accumulate = false, swiglu = false;
};
// With `norm`, x's rows are RMS-normalized with those weights (and eps) first, by the kernel
// itself: no norm launch (M rows of K values must fit, matmul_can_normalize).
void matmul(const float* x, int64_t M, const DeviceMatrix& w, const MatmulOutput& out, Stream s,
            const float* norm = nullptr, float eps = 0);
bool matmul_can_normalize(int64_t M, int64_t K);
// How many weight rows a block of the streaming kernel takes at a time (1, 2, 4 or 8: its 8 warps
// split each row into 8 / that slices), for a matrix of rows x cols in `dtype`, `resident` blocks
// on the GPU at once (host code: tests check the choice without a GPU).
int matmul_rows_per_block(int64_t rows, int64_t cols, DType dtype, bool swiglu, int64_t resident);
// x [n][table.cols] = rows ids[0..n) of `table` (the embedding) widened to f32 as matmul reads
// them. The ids must be rows of the table: the caller checks them.
void embed(const DeviceMatrix& table, const int32_t* ids, int64_t n, float* x, Stream s);
// The first kernel of a greedy decode step queued on the device behind the step before (one
// sequence): its x = the row that the argmax key (argmax_rows) names, a token the host has not read
// yet (it must be a row of the table; a key of 0 names row 0), the key also written to
// `key_for_host` (page-locked host memory, which the kernel writes itself: no copy on the stream)
// and the step's position, which the step before read, advanced by one.
void start_queued_step(const DeviceMatrix& table, const uint64_t* key, float* x, uint64_t* key_for_host,
                       int32_t* position, Stream s);
// A q8_0 or q4_0 matrix widened to f32 as matmul does, then rounded to f16 (within 2^-12): out
// [rows][cols] (a long chunk's product of such weights then runs on the tensor cores).
void widen_to_f16(const DeviceMatrix& w, uint16_t* out, Stream s);
// out [n][cols / 2] = silu(gate) * up of rows of (gate, up) pairs, y [n][cols] (a tensor-core
// product of a gate|up interleaved matrix).
void swiglu_pairs(const float* y, float* out, int64_t n, int64_t cols, Stream s);
// The same from (gate, up) pairs in `half` (BF16 or F16: the tensor cores' 16-bit output), written
// in `half`: the next tensor-core product's input, made directly.
void swiglu_half_pairs(const uint16_t* y, uint16_t* out, int64_t n, int64_t cols, DType half, Stream s);

// Paged KV cache of one layer: block b of the K pool and of the V pool is
// [local kv head][block_size][head_dim] floats. Token t of a step sits at position pos[t] of its
// sequence, whose block ids start at tables + table_offset[t].
struct KvShape {
  int64_t n_kv_heads = 0, head_dim = 0, block_size = 16;
};
// One step's q and k heads made ready for attention: each head RMS-normalized when its norm is
// given (Qwen3), then rotated by its token's position (as ops::rope); q in place, k written into
// the paged cache with v's head beside it. q [n][n_heads][head_dim], k and v [n][n_kv_heads][head_dim].
struct RopeStep {
  float* q = nullptr;  // packed [n][n_heads][head_dim]: rotated in place, or written from q_in
  const float *k = nullptr, *v = nullptr;
  // Where rope_and_store reads q, k and v when they are rows of one product (q|k|v side by side:
  // in_stride floats from a token's row to the next); null and 0: q, k and v packed as above.
  // The attention kernel's own RoPE takes them packed only.
  const float* q_in = nullptr;
  int64_t in_stride = 0;
  const float *q_norm = nullptr, *k_norm = nullptr;  // [head_dim] each, or null
  float eps = 0;
  int64_t n_heads = 0;
  const int32_t* pos = nullptr;
  const float* inv_freq = nullptr;
  bool adjacent_pairs = false;
  float *k_pool = nullptr, *v_pool = nullptr;
  const int32_t *tables = nullptr, *table_offset = nullptr;
  KvShape kv;
};
void rope_and_store(const RopeStep& step, int64_t n_tokens, Stream s);

// Causal attention for n_tokens query tokens [n][n_heads][head_dim]: token t sees positions
// 0..pos[t] of its sequence. Local query head h is model head head_offset + h and reads local kv
// head (head_offset + h) / group - kv_head_offset. head_dim: a multiple of 32, at most 256.
struct AttentionShape {
  int64_t n_heads = 0, group = 1, head_offset = 0, kv_head_offset = 0;
  KvShape kv;
};
// How a step's attention spreads over blocks: a block takes `heads` query heads of one kv head
// (grouped-query attention: they share its reads of the keys and values) of one token, and long
// contexts are split over `splits` blocks (flash-decoding), whose partial results need
// attention_partial_floats() floats of scratch, and `counters` n_tokens x n_heads ints,
// zero-filled when first allocated (each launch leaves them zero). attention_grid() picks both
// from the longest position of the step (max_pos) so that the GPU is full.
struct AttentionGrid {
  int64_t splits = 1;
  int heads = 1;
  friend auto operator<=>(const AttentionGrid&, const AttentionGrid&) = default;  // graphs are keyed by it
};
AttentionGrid attention_grid(int64_t n_tokens, int64_t max_pos, const AttentionShape& shape);
// The most query heads a block can take: a grid's `heads` divides it (1 where heads cannot share).
int attention_heads_per_block(const AttentionShape& shape);
int64_t attention_partial_floats(int64_t n_tokens, const AttentionGrid& grid, const AttentionShape& shape);
// past_is_stored: every token's earlier positions were stored by earlier steps (a decode step: one
// token per sequence), so their first keys and values are read while the kernel before still runs.
// Such a step may also pass `rope` (what rope_and_store would take; its q, k and v as the products
// left them, and pools and tables as above): the kernel then does that work itself, so the step
// needs no RoPE launch. Each block rotates its own q heads, the blocks that reach a token's own
// position rotate its k, and one of them per kv head stores k and v in the cache (where
// attention_can_rope: half-split pairs must lie in one lane).
bool attention_can_rope(int64_t head_dim, bool adjacent_pairs);
void attention(const float* q, const float* k_pool, const float* v_pool, const int32_t* tables,
               const int32_t* table_offset, const int32_t* pos, int64_t n_tokens, AttentionGrid grid,
               AttentionShape shape, bool past_is_stored, const RopeStep* rope, float* partial, int32_t* counters,
               float* out, Stream s);

// Causal attention of one sequence's n query tokens at positions start..start+n-1 (q and out as
// above) over its keys and values 0..start+n-1 in the paged pools (`table`: its block ids), on the
// tensor cores (flash attention: bf16 q, k, v and probabilities, f32 accumulation, relative error
// a few 1e-3 against the f32 kernel above). The keys and values are gathered into k_scratch and
// v_scratch first: n_kv_heads x (start + n) x head_dim bf16 each. head_dim: 64 or 128.
bool flash_attention_supports(int64_t head_dim);
void flash_attention(const float* q, const float* k_pool, const float* v_pool, const int32_t* table, int64_t start,
                     int64_t n, const AttentionShape& shape, uint16_t* k_scratch, uint16_t* v_scratch, float* out,
                     Stream s);
// A segment of this many query tokens (a prompt's chunk) takes flash_attention; shorter ones (a
// decode step's) batch into one launch of the paged kernel.
constexpr int64_t kFlashAttentionRows = 64;

}  // namespace shardlm::cuda

namespace shardlm::cuda {

// The ceiling of a decode step: bytes/s that a kernel reading `bytes` of device memory (and
// writing almost nothing) sustains on `device`, the median of 5 timed passes after a warm-up.
double measure_read_bandwidth(int device, size_t bytes = size_t(2) << 30);
// The ceiling issue 6 names: bytes/s read plus written by a device-to-device copy of `bytes`
// (cudaMemcpy, as bandwidthTest and nvbandwidth count it), the median of 5 timed passes. HBM turns
// between reads and writes, so this is below the read bandwidth; a decode step only reads.
double measure_copy_bandwidth(int device, size_t bytes = size_t(1) << 30);
// The floor of a decode step whose matrix products each stream their weights with a kernel of
// their own: the seconds that reading each of `sizes` bytes once takes (the same read kernel,
// launched back to back from a CUDA graph over regions that L2 does not hold from the launch
// before), summed. Small reads do not reach the bandwidth above: each kernel's start and drain
// cost a few microseconds.
double measure_read_seconds(int device, const std::vector<size_t>& sizes);
// "NVIDIA H200, 132 SMs, 139.8 GB".
std::string device_name(int device);

}  // namespace shardlm::cuda
