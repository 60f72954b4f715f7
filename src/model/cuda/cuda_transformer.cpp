// The layer loop of model/transformer.cpp with kernels/cuda in place of kernels/cpu; read the two
// side by side. Weights and the KV cache stay on the device; a call moves token ids (first stage)
// or x in, and the rows its caller reads out.
#include "model/cuda/cuda_transformer.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <tuple>
#include <utility>

#include "core/error.h"
#include "core/process_stats.h"
#include "core/log.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/tensor_core_gemm.h"
#include "model/rope.h"

namespace shardlm {

using cuda::DeviceBuffer;
using cuda::PinnedBuffer;
using cuda::DeviceMatrix;

namespace {

struct DeviceLayer {
  DeviceBuffer attn_norm, mlp_norm, q_norm, k_norm;
  DeviceMatrix qkv;  // q's rows, then k's, then v's
  int64_t q_rows = 0, k_rows = 0, v_rows = 0;
  DeviceMatrix o, gate_up, down;  // gate_up: gate and up rows interleaved, (gate j, up j) pairs
};

}  // namespace

struct CudaTransformer::Impl {
  cudaStream_t stream = nullptr;
  std::vector<DeviceBuffer> weights;  // every matrix's memory
  std::vector<DeviceLayer> layers;
  DeviceBuffer final_norm, inv_freq;
  DeviceMatrix lm_head, embedding;  // the embedding on the first stage: lm_head's memory when tied
  std::vector<DeviceBuffer> k_pools, v_pools;  // per layer
  int64_t n_heads = 0, n_kv_heads = 0, ffn = 0;
  std::unique_ptr<cuda::TensorCoreGemm> gemm;  // null without cuBLAS
  // Scratch, grown on demand.
  DeviceBuffer h, q, k, v, qkv_rows, attn, gate_up, act, partial, logits, splits, counters, head_x, best;
  DeviceBuffer flash_k, flash_v;  // a long segment's keys and values in bf16 (flash_attention)
  std::vector<float> host_partial;
  std::vector<int32_t> host_tables, host_offsets, host_positions;
  // A step's inputs in one buffer, so that one copy from pinned memory moves them: x [n][hidden]
  // floats (the first stage embeds its token ids there instead), then positions [n], table offsets
  // [n], token ids [n] and the block tables (ints). For a given n every address is fixed, as a
  // captured graph needs. The head's rows and argmax keys also cross in pinned memory.
  DeviceBuffer step_in;
  PinnedBuffer staging, head_staging;
  // The rows a step left on the device for the head (RowsRead::head_only): the host x they stand
  // for, where they start on the device, and how many (consecutive rows of x from `kept_first`).
  const float* kept_for = nullptr;
  const float* kept_rows = nullptr;
  int64_t kept_first = 0, kept_count = 0;
  int64_t cache_blocks = 0;  // the most block ids one step's tables can hold

  // A greedy decode step of one sequence queued by head_argmax before the host has read the token
  // of the step before: its embedding reads that token from the argmax key on the device, so the
  // GPU does not idle while the host takes the token and prepares the next step (1b preset, one
  // H100: about 19 us a step of the host and the inputs' copy; docs/gpu.md). run_layers then
  // skips that step's work if it is the step the host asks for; any other step runs after it,
  // which is harmless: it wrote only the sequence's next position, which a step there rewrites.
  struct NextStep {
    bool valid = false;
    const KvCache* cache = nullptr;
    int32_t slot = 0, token = -1;
    int64_t pos = 0;
    std::vector<int32_t> table;
  };
  NextStep last;   // the single-sequence decode step run_layers just queued (what head_argmax extends)
  NextStep ahead;  // the step head_argmax queued, valid until run_layers looks at it
  PinnedBuffer keys;  // a greedy head's argmax keys for the host
  cudaEvent_t keys_copied = nullptr;

  // Decode steps replay a CUDA graph of the whole layer loop (one launch instead of ~15 a layer),
  // captured once per (tokens, attention grid, one token per sequence) and valid while the
  // buffers it names stay put.
  bool use_graphs = true;
  using GraphKey = std::tuple<int64_t, cuda::AttentionGrid, bool>;
  // With tensor-parallel sums in it, a graph is captured twice: the timed one (an event node
  // before and after each sum) is launched the second time and every 16th after that.
  struct Graph {
    cudaGraphExec_t fast = nullptr, timed = nullptr;
    DeviceGroup::Captured fast_sums, timed_sums;
    int64_t launches = 0, last_timed = 0;
  };
  std::map<GraphKey, Graph> graphs;
  std::vector<const void*> graph_buffers;

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);  // a step queued ahead may still run
    if (keys_copied) cudaEventDestroy(keys_copied);
    drop_graphs();
    if (stream) cudaStreamDestroy(stream);
  }
  void drop_graphs() {
    for (auto& [key, graph] : graphs)
      for (cudaGraphExec_t exec : {graph.fast, graph.timed})
        if (exec) cudaGraphExecDestroy(exec);
    graphs.clear();
  }
  // Scratch for `tokens` rows (grown here, not mid-step, so captured graphs stay valid).
  void reserve_scratch(int64_t tokens, int64_t hidden, int64_t q_dim, int64_t kv_dim) {
    for (DeviceBuffer* b : {&h, &partial}) b->grow(size_t(tokens * hidden) * 4);
    step_in.grow(size_t(tokens * hidden + 3 * tokens + cache_blocks) * 4);
    for (DeviceBuffer* b : {&q, &attn}) b->grow(size_t(tokens * q_dim) * 4);
    for (DeviceBuffer* b : {&k, &v}) b->grow(size_t(tokens * kv_dim) * 4);
    if (gemm) qkv_rows.grow(size_t(tokens * (q_dim + 2 * kv_dim)) * 4);
    gate_up.grow(size_t(tokens * 2 * ffn) * 4);
    act.grow(size_t(tokens * ffn) * 4);
    // Products' rows: up to the stacked q|k|v (one product when RoPE reads its rows) or gate|up.
    if (gemm) gemm->reserve(tokens, std::max({hidden, q_dim, ffn}), std::max({hidden, q_dim + 2 * kv_dim, 2 * ffn}));
  }
  // The buffers a captured graph names: it is valid while none has moved.
  std::vector<const void*> graph_named_buffers() const {
    return {step_in.get(), h.get(),       q.get(),   k.get(),      v.get(),        qkv_rows.get(),
            attn.get(),    gate_up.get(), act.get(), splits.get(), counters.get(), widened.get(),
            partial.get(), gemm ? gemm->scratch().first : nullptr, gemm ? gemm->scratch().second : nullptr};
  }
  // Runs `enqueue` (the layer loop, on `stream`) through the graph of `key`, capturing it first;
  // `sums` (or null) is the group whose sums the loop queues.
  template <class F>
  void replay(GraphKey key, F&& enqueue, DeviceGroup* sums) {
    const std::vector<const void*> buffers = graph_named_buffers();
    if (buffers != graph_buffers || graphs.size() >= 64) drop_graphs(), graph_buffers = buffers;
    auto found = graphs.find(key);
    if (found == graphs.end()) {
      Graph g;
      g.fast = capture(enqueue, sums, false, &g.fast_sums);
      try {
        if (sums) g.timed = capture(enqueue, sums, true, &g.timed_sums);
      } catch (...) {
        cudaGraphExecDestroy(g.fast);  // a graph left alive would keep NCCL from ever letting go
        throw;
      }
      found = graphs.emplace(key, g).first;
    }
    Graph& g = found->second;
    ++g.launches;
    const bool timed = g.timed && g.launches % 16 == 2;
    SHARDLM_CUDA_CHECK(cudaGraphLaunch(timed ? g.timed : g.fast, stream));
    if (sums) sums->replayed(timed ? g.timed_sums : g.fast_sums, int(g.launches - g.last_timed));
    if (timed) g.last_timed = g.launches;
  }
  template <class F>
  cudaGraphExec_t capture(F& enqueue, DeviceGroup* sums, bool timed, DeviceGroup::Captured* captured) {
    cudaGraph_t graph = nullptr;
    SHARDLM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    if (sums) sums->begin_capture(timed);
    try {
      enqueue();
    } catch (...) {
      if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
      if (sums) sums->end_capture();
      throw;
    }
    const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
    if (sums) *captured = sums->end_capture();
    SHARDLM_CUDA_CHECK(ended);
    cudaGraphExec_t exec = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    SHARDLM_CUDA_CHECK(e);
    return exec;
  }

  template <class T>
  void upload(DeviceBuffer& dst, const T* src, size_t count) {
    dst.grow(count * sizeof(T));
    SHARDLM_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src, count * sizeof(T), cudaMemcpyHostToDevice, stream));
  }
  DeviceBuffer upload_vector(const std::vector<float>& v) {
    DeviceBuffer b;
    if (!v.empty()) upload(b, v.data(), v.size());
    return b;
  }
  // Rows as they are in every dtype (a column slice's stride dropped): matmul reads f32, bf16,
  // f16, q8_0 and q4_0 weights itself.
  DeviceMatrix upload_matrix(const WeightMatrix& m) { return upload_group({&m}, false); }
  // Several matrices of the same columns in one: their rows stacked (q, k and v: one launch of a
  // decode step reads the three), or interleaved row by row (gate and up: each (gate j, up j) pair
  // side by side, for SwiGLU in the product's epilogue). Matrices of different dtypes are widened
  // to f32 first, a matrix having one dtype.
  DeviceMatrix upload_group(std::initializer_list<const WeightMatrix*> group, bool interleave) {
    const WeightMatrix& first = **group.begin();
    int64_t rows = 0;
    bool mixed = false;
    for (const WeightMatrix* m : group) {
      if (!m->data || m->rows == 0) return {};
      SHARDLM_CHECK(m->cols == first.cols && (!interleave || m->rows == first.rows),
                    "internal: matrices of different shapes grouped on the GPU");
      rows += m->rows;
      mixed |= m->dtype != first.dtype;
    }
    const DType dtype = mixed ? DType::F32 : first.dtype;
    const int64_t row_bytes = dtype_bytes(dtype, first.cols);
    const int64_t pitch = interleave ? row_bytes * int64_t(group.size()) : row_bytes;
    DeviceBuffer& b = weights.emplace_back(size_t(row_bytes * rows));
    std::vector<float> as_f32;
    int64_t offset = 0;  // bytes to this matrix's first row
    for (const WeightMatrix* m : group) {
      const uint8_t* src = m->data;
      int64_t src_pitch = m->row_stride;
      if (mixed) {
        as_f32.resize(size_t(m->rows * m->cols));
        for (int64_t r = 0; r < m->rows; ++r)
          to_f32(m->dtype, m->data + r * m->row_stride, as_f32.data() + r * m->cols, m->cols);
        src = reinterpret_cast<const uint8_t*>(as_f32.data()), src_pitch = row_bytes;
      }
      SHARDLM_CUDA_CHECK(cudaMemcpy2D(b.get<uint8_t>() + offset, size_t(pitch), src, size_t(src_pitch),
                                      size_t(row_bytes), size_t(m->rows), cudaMemcpyHostToDevice));
      offset += interleave ? row_bytes : row_bytes * m->rows;
    }
    return {dtype, b.get(), rows, first.cols};
  }
  // Rows [begin, begin + count) of m.
  static DeviceMatrix rows_of(const DeviceMatrix& m, int64_t begin, int64_t count) {
    return {m.dtype, static_cast<const uint8_t*>(m.data) + begin * dtype_bytes(m.dtype, m.cols), count, m.cols};
  }

  // y (+)= x W^T: many rows on the tensor cores, a decode step's few by streaming W. Quantized
  // weights (which cuBLAS does not take) are first widened to f16 scratch, from kWidenRows rows on:
  // the streaming kernel reads W once per 8 rows of x, the widening once.
  static constexpr int64_t kWidenRows = 16;
  DeviceBuffer widened;  // the largest layer matrix in f16, when some are quantized
  static bool cublas_dtype(DType t) { return t == DType::BF16 || t == DType::F16 || t == DType::F32; }
  bool on_tensor_cores(const DeviceMatrix& w, int64_t n) const {
    return gemm && (cublas_dtype(w.dtype) ? n >= cuda::TensorCoreGemm::kMinRows : n >= kWidenRows && widened.bytes());
  }
  // w as the tensor cores take it: widened into scratch when it is quantized.
  DeviceMatrix for_tensor_cores(const DeviceMatrix& w) {
    if (cublas_dtype(w.dtype)) return w;
    cuda::widen_to_f16(w, widened.get<uint16_t>(), stream);
    return {DType::F16, widened.get(), w.rows, w.cols};
  }
  // x_half: x_rows already rounded for the tensor cores (mlp_activation's), or null.
  void matmul(const float* x_rows, int64_t n, const DeviceMatrix& w, float* y, bool accumulate,
              const uint16_t* x_half = nullptr) {
    if (x_half) gemm->run_half(x_half, n, for_tensor_cores(w), y, accumulate);
    else if (on_tensor_cores(w, n)) gemm->run(x_rows, n, for_tensor_cores(w), y, accumulate);
    else cuda::matmul(x_rows, n, w, y, accumulate, stream);
  }
  // The 16-bit type the tensor cores take w in (quantized weights are widened to f16).
  static DType tensor_core_dtype(const DeviceMatrix& w) { return cublas_dtype(w.dtype) ? w.dtype : DType::F16; }
  // The product's input: x normalized into h.
  const float* normed(const float* x_rows, int64_t n, const DeviceBuffer& norm, int64_t dim, float eps) {
    cuda::rmsnorm(x_rows, norm.get<float>(), h.get<float>(), n, dim, eps, stream);
    return h.get<float>();
  }
  // Where the tensor cores round the product's input once: x normalized straight into that 16-bit
  // input (one pass over x instead of a norm, then a rounding).
  const uint16_t* normed_half(const float* x_rows, int64_t n, const DeviceBuffer& norm, int64_t dim, float eps,
                              DType half) {
    uint16_t* out = gemm->input_scratch(n, dim);
    cuda::rmsnorm(x_rows, norm.get<float>(), out, n, dim, eps, half, stream);
    return out;
  }
  // A streaming product's input of n rows of RMSNorm(x): x and the norm, which the product applies
  // itself (no norm launch), or, rows too long for that, x normalized into h and no norm.
  std::pair<const float*, const float*> streaming_input(const float* x_rows, int64_t n, const DeviceBuffer& norm,
                                                        int64_t dim, float eps) {
    if (cuda::matmul_can_normalize(n, dim)) return {x_rows, norm.get<float>()};
    return {normed(x_rows, n, norm, dim, eps), nullptr};
  }
  // q, k and v of n rows of RMSNorm(x) for `rope` (whose q, k and v are the packed buffers): one
  // streaming launch over their stacked rows, or on the tensor cores one product of the stacked
  // matrix whose rows RoPE then reads in place (rope.q_in, in_stride), or, when the attention does
  // the RoPE (a decode step, which takes q, k and v packed), three products.
  void project_qkv(const float* x_rows, int64_t n, const DeviceLayer& L, float eps, bool rope_in_attention,
                   cuda::RopeStep& rope) {
    const cuda::MatmulPart parts[] = {{q.get<float>(), L.q_rows}, {k.get<float>(), L.k_rows}, {v.get<float>(), L.v_rows}};
    if (!on_tensor_cores(L.qkv, n)) {
      const auto [in, norm] = streaming_input(x_rows, n, L.attn_norm, L.qkv.cols, eps);
      cuda::matmul(in, n, L.qkv, cuda::MatmulOutput{parts}, stream, norm, eps);
      return;
    }
    const DeviceMatrix qkv = for_tensor_cores(L.qkv);
    const bool once = gemm->rounds_once(n, qkv.dtype);
    const uint16_t* half = once ? normed_half(x_rows, n, L.attn_norm, qkv.cols, eps, qkv.dtype) : nullptr;
    const float* in = once ? nullptr : normed(x_rows, n, L.attn_norm, qkv.cols, eps);
    auto product = [&](const DeviceMatrix& w, float* y) {
      if (half) gemm->run_half(half, n, w, y, false);
      else gemm->run(in, n, w, y, false);
    };
    if (!rope_in_attention) {
      float* rows = qkv_rows.get<float>();
      product(qkv, rows);
      rope.q_in = rows, rope.k = rows + L.q_rows, rope.v = rows + L.q_rows + L.k_rows;
      rope.in_stride = L.qkv.rows;
      return;
    }
    int64_t begin = 0;
    for (const cuda::MatmulPart& p : parts) {
      product(rows_of(qkv, begin, p.rows), p.y);
      begin += p.rows;
    }
  }
  // y (+)= down(silu(gate) * up) of n rows of RMSNorm(x), through act.
  void mlp(const float* x_rows, int64_t n, const DeviceLayer& L, float eps, float* act, float* y, bool accumulate) {
    const uint16_t* act_half = mlp_activation(x_rows, n, L, eps, act);
    matmul(act, n, L.down, y, accumulate, act_half);
  }
  // silu(gate) * up of n rows of RMSNorm(x) into act: SwiGLU in the streaming product's epilogue,
  // or after the tensor cores' product of the interleaved matrix (into gate_up). Where the tensor
  // cores round their inputs once, the norm writes gate|up's 16-bit input, the product writes
  // 16-bit gate and up values (as PyTorch's bf16 model does: half the bytes for SwiGLU to read) and
  // SwiGLU writes the down product's 16-bit input, returned (else null).
  const uint16_t* mlp_activation(const float* x_rows, int64_t n, const DeviceLayer& L, float eps, float* act) {
    if (on_tensor_cores(L.gate_up, n)) {
      const DeviceMatrix gate_up_w = for_tensor_cores(L.gate_up);
      const DType down = tensor_core_dtype(L.down);
      if (gemm->rounds_once(n, gate_up_w.dtype) && on_tensor_cores(L.down, n) && down == gate_up_w.dtype) {
        const uint16_t* in = normed_half(x_rows, n, L.mlp_norm, gate_up_w.cols, eps, gate_up_w.dtype);
        uint16_t* pairs = gate_up.get<uint16_t>();
        gemm->run_half_out(in, n, gate_up_w, pairs);
        uint16_t* half = gemm->input_scratch(n, L.down.cols);  // the product above has read `in`
        cuda::swiglu_half_pairs(pairs, half, n, L.gate_up.rows, down, stream);
        return half;
      }
      gemm->run(normed(x_rows, n, L.mlp_norm, L.gate_up.cols, eps), n, gate_up_w, gate_up.get<float>(), false);
      cuda::swiglu_pairs(gate_up.get<float>(), act, n, L.gate_up.rows, stream);
      return nullptr;
    }
    const auto [in, norm] = streaming_input(x_rows, n, L.mlp_norm, L.gate_up.cols, eps);
    const cuda::MatmulPart part{act, L.gate_up.rows / 2};
    cuda::matmul(in, n, L.gate_up, cuda::MatmulOutput{{&part, 1}, false, /*swiglu=*/true}, stream, norm, eps);
    return nullptr;
  }
};

CudaTransformer::CudaTransformer(const ModelWeights& w, int rank) : w_(w), impl_(std::make_unique<Impl>()) {
  int count = 0;
  SHARDLM_CUDA_CHECK(cudaGetDeviceCount(&count));
  SHARDLM_CHECK(count > 0, "--device cuda: no CUDA device is visible");
  device_ = rank % count;
  SHARDLM_CUDA_CHECK(cudaSetDevice(device_));
  // The weights in their own dtype, and the embedding where the head's copy is not the whole
  // table (as `shardlm plan` counts them): refused before copying, where a failed cudaMalloc
  // would say only "out of memory".
  const int64_t needed = w.bytes + (embedding_copied(w) ? w.embedding.nbytes : 0), free = free_memory_bytes();
  SHARDLM_CHECK(needed <= free, "this rank's weights need {} but {} has {} free; split the model over more GPUs (--pp or "
                "--tp) or use a quantized GGUF (q8_0, q4_0)", gib(needed), memory_name(), gib(free));
  Impl& d = *impl_;
  SHARDLM_CUDA_CHECK(cudaStreamCreateWithFlags(&d.stream, cudaStreamNonBlocking));
  d.n_heads = w.slice.head_end - w.slice.head_begin;
  d.n_kv_heads = w.slice.kv_head_end - w.slice.kv_head_begin;
  d.ffn = w.slice.ffn_end - w.slice.ffn_begin;
  for (const LayerWeights& L : w.layers) {
    DeviceLayer& D = d.layers.emplace_back();
    D.attn_norm = d.upload_vector(L.attn_norm);
    D.mlp_norm = d.upload_vector(L.mlp_norm);
    D.q_norm = d.upload_vector(L.q_norm);
    D.k_norm = d.upload_vector(L.k_norm);
    D.qkv = d.upload_group({&L.q, &L.k, &L.v}, /*interleave=*/false);
    D.q_rows = L.q.rows, D.k_rows = L.k.rows, D.v_rows = L.v.rows;
    D.o = d.upload_matrix(L.o);
    D.gate_up = d.upload_group({&L.gate, &L.up}, /*interleave=*/true);
    D.down = d.upload_matrix(L.down);
  }
  if (w.slice.head) {
    d.final_norm = d.upload_vector(w.final_norm);
    d.lm_head = d.upload_matrix(w.lm_head);
  }
  if (w.slice.embedding) {
    const TensorView& e = w.embedding;
    const bool tied = w.lm_head.data == e.bytes() && w.lm_head.rows == e.rows() && w.lm_head.dtype == e.dtype;
    const WeightMatrix table{e.dtype, e.bytes(), e.rows(), e.cols(), dtype_bytes(e.dtype, e.cols())};
    d.embedding = tied && d.lm_head.data ? d.lm_head : d.upload_matrix(table);
  }
  d.inv_freq = d.upload_vector(rope_inverse_frequencies(w.config));
  const char* graphs = std::getenv("SHARDLM_CUDA_GRAPHS");  // 0: launch every kernel (to compare)
  d.use_graphs = !(graphs && std::string(graphs) == "0");
  std::string why;
  d.gemm = cuda::TensorCoreGemm::create(d.stream, &why);
  if (!d.gemm) log_info("rank {}: prefill without tensor cores: {}", rank, why);
  int64_t widest = 0;  // elements of the largest quantized layer matrix
  for (const DeviceLayer& L : d.layers)
    for (const DeviceMatrix* m : {&L.qkv, &L.o, &L.gate_up, &L.down})
      if (!Impl::cublas_dtype(m->dtype)) widest = std::max(widest, m->rows * m->cols);
  if (d.gemm && widest) d.widened.grow(size_t(widest) * 2);
  SHARDLM_CUDA_CHECK(cudaStreamSynchronize(d.stream));
}

CudaTransformer::~CudaTransformer() = default;

int64_t CudaTransformer::cache_block_bytes() const {
  return KvCache::block_bytes(int64_t(w_.layers.size()), impl_->n_kv_heads, config().head_dim, KvCache::kDefaultBlockSize);
}

KvCache CudaTransformer::make_cache(int64_t blocks) {
  Impl& d = *impl_;
  const size_t layer_bytes = size_t(blocks * KvCache::kDefaultBlockSize * d.n_kv_heads * config().head_dim) * 4;
  d.drop_graphs();
  d.k_pools.clear();
  d.v_pools.clear();
  d.cache_blocks = blocks;  // every block in one step's tables at most
  const ModelConfig& c = config();
  d.reserve_scratch(cuda::kFlashAttentionRows, c.hidden_size, d.n_heads * c.head_dim, d.n_kv_heads * c.head_dim);
  for (size_t l = 0; l < w_.layers.size(); ++l) {
    d.k_pools.emplace_back(layer_bytes);
    d.v_pools.emplace_back(layer_bytes);
  }
  return KvCache(int64_t(w_.layers.size()), d.n_kv_heads, config().head_dim, KvCache::kDefaultBlockSize, blocks,
                 /*host_pools=*/false);
}

int64_t CudaTransformer::free_memory_bytes() const {
  size_t free = 0, total = 0;
  SHARDLM_CUDA_CHECK(cudaSetDevice(device_));
  SHARDLM_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return int64_t(free);
}

int64_t CudaTransformer::device_bytes() const {
  int64_t total = 0;
  for (const DeviceBuffer& b : impl_->weights) total += int64_t(b.bytes());
  for (const auto* pools : {&impl_->k_pools, &impl_->v_pools})
    for (const DeviceBuffer& b : *pools) total += int64_t(b.bytes());
  return total;
}

void CudaTransformer::run_layers(const int32_t* ids, float* x, std::span<const Segment> segments, KvCache& cache,
                                 RowsRead read) {
  Impl& d = *impl_;
  const ModelConfig& c = config();
  const int64_t H = c.hidden_size, D = c.head_dim, q_dim = d.n_heads * D, kv_dim = d.n_kv_heads * D;
  const float eps = float(c.rms_norm_eps);
  const cudaStream_t s = d.stream;
  d.kept_for = nullptr;
  d.last.valid = false;
  // Where each token's keys and values go: its position and its sequence's block table.
  const int64_t n = reserve_segments(c, segments, cache);
  if (ids) {
    SHARDLM_CHECK(d.embedding.data, "internal: token ids for a rank without the embedding");
    check_token_ids(c, ids, n);  // the device reads the rows they name
  }
  // One sequence's decode step whose only row goes to the head: it may run ahead (Impl::NextStep).
  const bool single_decode = ids && n == 1 && segments.size() == 1 && !read.all && read.head_only &&
                             read.rows.size() == 1 && read.rows[0] == 0;
  // Queued only where the sequence goes on: one that ends by its budget would leave the queued step
  // in front of the next request's prompt (2K prefill of the 1b preset: 228K -> 207-209K tok/s).
  const bool queue_next = single_decode && read.sequences_go_on;
  auto next_step = [&] {
    const Segment& seg = segments[0];
    return Impl::NextStep{true, &cache, seg.slot, -1, seg.start, cache.blocks(seg.slot)};
  };
  if (std::exchange(d.ahead.valid, false) && single_decode) {
    const Segment& seg = segments[0];
    if (&cache == d.ahead.cache && seg.slot == d.ahead.slot && seg.start == d.ahead.pos && ids[0] == d.ahead.token &&
        cache.blocks(seg.slot) == d.ahead.table) {
      d.kept_for = x, d.kept_rows = d.step_in.get<float>(), d.kept_first = 0, d.kept_count = 1;
      if (queue_next) d.last = next_step();
      return;  // queued already
    }
  }
  d.host_tables.clear(), d.host_offsets.clear(), d.host_positions.clear();
  // A segment that takes flash attention (a prompt's chunk): its keys and values in bf16 scratch.
  const bool flash = cuda::flash_attention_supports(D);
  bool long_segment = false, decode_step = true;  // decode: one token per sequence
  for (const Segment& seg : segments) {
    const int32_t offset = int32_t(d.host_tables.size());
    decode_step &= seg.n_tokens == 1;
    if (flash && seg.n_tokens >= cuda::kFlashAttentionRows) {
      long_segment = true;
      for (DeviceBuffer* b : {&d.flash_k, &d.flash_v}) b->grow(size_t((seg.start + seg.n_tokens) * kv_dim) * 2);
    }
    const std::vector<int32_t>& blocks = cache.blocks(seg.slot);
    d.host_tables.insert(d.host_tables.end(), blocks.begin(), blocks.end());
    for (int64_t i = 0; i < seg.n_tokens; ++i) {
      d.host_offsets.push_back(offset);
      d.host_positions.push_back(int32_t(seg.start + i));
    }
  }
  const int64_t max_pos = *std::max_element(d.host_positions.begin(), d.host_positions.end());
  d.reserve_scratch(n, H, q_dim, kv_dim);
  const size_t x_bytes = size_t(n * H) * 4, in_bytes = x_bytes + (3 * size_t(n) + d.host_tables.size()) * 4;
  d.staging.grow(in_bytes);
  // x from the host, unless this is the first stage (made from the ids) or the stage before sends
  // it to the device.
  const bool x_from_peer = !ids && pipeline_ && pipeline_from_ >= 0, x_from_host = !ids && !x_from_peer;
  if (x_from_host) std::copy_n(x, n * H, d.staging.get<float>());
  int32_t* ints = reinterpret_cast<int32_t*>(d.staging.get<uint8_t>() + x_bytes);
  std::copy(d.host_positions.begin(), d.host_positions.end(), ints);
  std::copy(d.host_offsets.begin(), d.host_offsets.end(), ints + n);
  if (ids) std::copy_n(ids, n, ints + 2 * n);
  std::copy(d.host_tables.begin(), d.host_tables.end(), ints + 3 * n);
  const size_t skip = x_from_host ? 0 : x_bytes;
  SHARDLM_CUDA_CHECK(cudaMemcpyAsync(d.step_in.get<uint8_t>() + skip, d.staging.get<uint8_t>() + skip, in_bytes - skip,
                                     cudaMemcpyHostToDevice, s));
  float* dx = d.step_in.get<float>();
  const int32_t* pos = reinterpret_cast<const int32_t*>(dx + n * H);
  const int32_t *offsets = pos + n, *tables = offsets + 2 * n;
  if (ids) cuda::embed(d.embedding, offsets + n, n, dx, s);
  if (x_from_peer) pipeline_->recv(pipeline_from_, dx, n * H, s);

  // x += W a, summed over the stage's TP ranks when this rank holds a slice: on the GPU through
  // the device all-reduce when there is one, else through the host.
  // `product(y, accumulate)` queues a product of the rank's slice into y.
  auto project_and_add = [&](auto&& product) {
    if (!w_.tensor_parallel) {
      product(dx, /*accumulate=*/true);
      return;
    }
    product(d.partial.get<float>(), false);
    if (device_all_reduce_) {
      if (device_all_reduce_->sum_into(d.partial.get<float>(), dx, n * H, s)) return;
      device_all_reduce_->sum(d.partial.get<float>(), n * H, s);
    } else {
      SHARDLM_CHECK(bool(all_reduce_), "internal: tensor-parallel weights without an all-reduce");
      d.host_partial.resize(size_t(n * H));
      SHARDLM_CUDA_CHECK(cudaMemcpyAsync(d.host_partial.data(), d.partial.get(), size_t(n * H) * 4, cudaMemcpyDeviceToHost, s));
      SHARDLM_CUDA_CHECK(cudaStreamSynchronize(s));
      all_reduce_(d.host_partial.data(), n * H);
      SHARDLM_CUDA_CHECK(cudaMemcpyAsync(d.partial.get(), d.host_partial.data(), size_t(n * H) * 4, cudaMemcpyHostToDevice, s));
    }
    cuda::add(dx, d.partial.get<float>(), n * H, s);
  };
  const bool adjacent = c.rope_style == RopeStyle::Adjacent;
  const cuda::KvShape kv_shape{d.n_kv_heads, D, KvCache::kDefaultBlockSize};
  const cuda::AttentionShape shape = attention_shape();
  // Attention: a step of short segments (decode) in one launch of the paged kernel; with a long one
  // (prefill), each long segment by flash attention and each short one on the paged kernel.
  const cuda::AttentionGrid grid = cuda::attention_grid(n, max_pos, shape);
  std::vector<cuda::AttentionGrid> segment_grids;  // with a long segment: each short one's own
  int64_t partial_floats = cuda::attention_partial_floats(n, grid, shape);
  if (long_segment) {
    for (const Segment& seg : segments) {
      segment_grids.push_back(cuda::attention_grid(seg.n_tokens, seg.start + seg.n_tokens - 1, shape));
      partial_floats = std::max(partial_floats, cuda::attention_partial_floats(seg.n_tokens, segment_grids.back(), shape));
    }
  }
  d.splits.grow(size_t(partial_floats) * 4 + 4);
  if (d.counters.grow(size_t(n * d.n_heads) * 4))  // they start at zero, and the attention leaves them so
    SHARDLM_CUDA_CHECK(cudaMemsetAsync(d.counters.get(), 0, d.counters.bytes(), s));
  // A decode step's RoPE and KV store run inside the attention kernel (`rope`), else as a kernel of
  // their own before it.
  const bool rope_in_attention = decode_step && cuda::attention_can_rope(D, adjacent);
  auto attend = [&](const float* q_rows, const float* k_pool, const float* v_pool, float* out,
                    const cuda::RopeStep* rope) {
    if (!long_segment) {
      cuda::attention(q_rows, k_pool, v_pool, tables, offsets, pos, n, grid, shape, decode_step, rope,
                      d.splits.get<float>(), d.counters.get<int32_t>(), out, s);
      return;
    }
    int64_t t = 0;
    for (size_t i = 0; i < segments.size(); ++i) {
      const Segment& seg = segments[i];
      if (flash && seg.n_tokens >= cuda::kFlashAttentionRows) {
        const int32_t table = d.host_offsets[size_t(t)];  // where this segment's block ids start
        cuda::flash_attention(q_rows + t * q_dim, k_pool, v_pool, tables + table, seg.start, seg.n_tokens, shape,
                              d.flash_k.get<uint16_t>(), d.flash_v.get<uint16_t>(), out + t * q_dim, s);
      } else {
        cuda::attention(q_rows + t * q_dim, k_pool, v_pool, tables, offsets + t, pos + t, seg.n_tokens, segment_grids[i],
                        shape, seg.n_tokens == 1, nullptr, d.splits.get<float>(),
                        d.counters.get<int32_t>(), out + t * q_dim, s);
      }
      t += seg.n_tokens;
    }
  };
  float *q = d.q.get<float>(), *k = d.k.get<float>(), *v = d.v.get<float>();
  auto enqueue_layers = [&] {
    for (size_t l = 0; l < d.layers.size(); ++l) {
      const DeviceLayer& L = d.layers[l];
      float *k_pool = d.k_pools[l].get<float>(), *v_pool = d.v_pools[l].get<float>();
      cuda::RopeStep step{q, k, v, nullptr, 0, L.q_norm.get<float>(), L.k_norm.get<float>(), eps, d.n_heads, pos,
                          d.inv_freq.get<float>(), adjacent, k_pool, v_pool, tables, offsets, kv_shape};
      d.project_qkv(dx, n, L, eps, rope_in_attention, step);
      if (!rope_in_attention) cuda::rope_and_store(step, n, s);
      attend(q, k_pool, v_pool, d.attn.get<float>(), rope_in_attention ? &step : nullptr);
      project_and_add([&](float* y, bool accumulate) { d.matmul(d.attn.get<float>(), n, L.o, y, accumulate); });
      project_and_add([&](float* y, bool accumulate) { d.mlp(dx, n, L, eps, d.act.get<float>(), y, accumulate); });
    }
  };
  // Decode steps (and short chunks) as graphs: not flash attention (its grid and scratch vary with
  // the context), nor tensor-parallel sums through the host (NCCL's are captured with the rest).
  // The wait is bounded, unlike a copy that waits on peers. A lost peer (or any failure once the
  // step's transfers may be queued) leaves NCCL's kernels waiting: the graphs that captured them
  // go first (NCCL's abort waits for those), then every group is aborted, which ends the kernels,
  // before anything can free memory they use.
  const bool replayed = d.use_graphs && !long_segment && (!w_.tensor_parallel || device_all_reduce_);
  try {
    if (replayed) d.replay({n, grid, decode_step}, enqueue_layers, device_all_reduce_);
    else enqueue_layers();
    if (pipeline_ && pipeline_to_ >= 0) pipeline_->send(pipeline_to_, dx, n * H, s);
    for (DeviceGroup* g : {device_all_reduce_, pipeline_})
      if (g) g->wait(s);
  } catch (...) {
    d.drop_graphs();
    for (DeviceGroup* g : {device_all_reduce_, pipeline_})
      if (g) g->abort();
    throw;
  }
  // Back to the host: the rows read, from the first to the last of them in one copy.
  int64_t first = 0, last = n - 1;
  if (!read.all) {
    first = n, last = -1;
    for (int64_t r : read.rows) first = std::min(first, r), last = std::max(last, r);
    SHARDLM_CHECK(first >= 0 && last < n, "internal: rows read outside the step's {} tokens", n);
  }
  // Consecutive rows that only the head reads stay here: the head's kernels queue behind the
  // layers' with no wait and no trip through the host in between (1b preset, one H200: decode
  // 911-914 -> 925-936 tok/s).
  bool consecutive = !read.all && !read.rows.empty();
  for (size_t i = 0; consecutive && i < read.rows.size(); ++i) consecutive = read.rows[i] == first + int64_t(i);
  if (read.head_only && consecutive) {
    d.kept_for = x, d.kept_rows = dx + first * H, d.kept_first = first, d.kept_count = last - first + 1;
    if (queue_next && replayed && !pipeline_ && !w_.tensor_parallel) d.last = next_step();
    return;
  }
  const size_t row_bytes = size_t(H) * 4, bytes = last >= first ? size_t(last - first + 1) * row_bytes : 0;
  if (bytes)
    SHARDLM_CUDA_CHECK(cudaMemcpyAsync(d.staging.get(), dx + first * H, bytes, cudaMemcpyDeviceToHost, s));
  SHARDLM_CUDA_CHECK(cudaStreamSynchronize(s));
  std::copy_n(d.staging.get<float>(), bytes / 4, x + first * H);
}

cuda::AttentionShape CudaTransformer::attention_shape() const {
  const ModelConfig& c = config();
  const cuda::KvShape kv{impl_->n_kv_heads, c.head_dim, KvCache::kDefaultBlockSize};
  return {impl_->n_heads, c.num_heads / c.num_kv_heads, w_.slice.head_begin, w_.slice.kv_head_begin, kv};
}

// Final norm and lm_head of the given rows on the device; logits stay there (d.logits).
void CudaTransformer::head_on_device(const float* x, std::span<const int64_t> rows) {
  Impl& d = *impl_;
  const ModelConfig& c = config();
  const int64_t H = c.hidden_size, m = int64_t(rows.size()), V = local_vocab();
  const float* in = d.kept_rows;  // the rows the step left on the device, else uploaded
  if (x == d.kept_for) {
    bool same = m == d.kept_count;
    for (int64_t i = 0; same && i < m; ++i) same = rows[size_t(i)] == d.kept_first + i;
    SHARDLM_CHECK(same, "internal: the head reads rows other than the step left on the device");
    d.kept_for = nullptr;
    d.head_x.grow(size_t(m * H) * 4);
  } else {
    d.head_staging.grow(size_t(m * H) * 4);
    for (int64_t i = 0; i < m; ++i) std::copy_n(x + rows[size_t(i)] * H, H, d.head_staging.get<float>() + i * H);
    d.upload(d.head_x, d.head_staging.get<float>(), size_t(m * H));
    in = d.head_x.get<float>();
  }
  cuda::rmsnorm(in, d.final_norm.get<float>(), d.head_x.get<float>(), m, H, float(c.rms_norm_eps),
                d.stream);
  d.logits.grow(size_t(m * V) * 4);
  d.matmul(d.head_x.get<float>(), m, d.lm_head, d.logits.get<float>(), false);
}

void CudaTransformer::head(const float* x, std::span<const int64_t> rows, float* logits) {
  if (rows.empty()) return;
  impl_->last.valid = false;
  head_on_device(x, rows);
  Impl& d = *impl_;
  const size_t bytes = rows.size() * size_t(local_vocab()) * 4;
  SHARDLM_CUDA_CHECK(cudaMemcpyAsync(logits, d.logits.get(), bytes, cudaMemcpyDeviceToHost, d.stream));
  SHARDLM_CUDA_CHECK(cudaStreamSynchronize(d.stream));
}

// Greedy steps: the argmax on the device, so only 8 bytes a row cross PCIe (not the whole row).
void CudaTransformer::head_argmax(const float* x, std::span<const int64_t> rows, float* values, int32_t* ids) {
  if (rows.empty()) return;
  Impl& d = *impl_;
  const bool after_step = x == d.kept_for;  // the head of the step run_layers just queued
  head_on_device(x, rows);
  const int64_t m = int64_t(rows.size());
  d.best.grow(size_t(m) * 8);
  cuda::argmax_rows(d.logits.get<float>(), m, local_vocab(), d.best.get<uint64_t>(), d.stream);
  d.keys.grow(size_t(m) * 8);
  uint64_t* keys = d.keys.get<uint64_t>();
  if (!d.keys_copied) SHARDLM_CUDA_CHECK(cudaEventCreateWithFlags(&d.keys_copied, cudaEventDisableTiming));
  const bool queued = after_step && m == 1 && queue_next_step();  // whose first kernel hands the key over
  if (!queued) {
    SHARDLM_CUDA_CHECK(cudaMemcpyAsync(keys, d.best.get(), size_t(m) * 8, cudaMemcpyDeviceToHost, d.stream));
    SHARDLM_CUDA_CHECK(cudaEventRecord(d.keys_copied, d.stream));
  }
  SHARDLM_CUDA_CHECK(cudaEventSynchronize(d.keys_copied));
  for (int64_t i = 0; i < m; ++i) cuda::decode_argmax_key(keys[i], values + i, ids + i);
  if (queued) d.ahead.token = ids[0];  // one rank holds the whole vocabulary: its ids are the model's
}

// The next decode step of the sequence whose head was just queued, queued behind it with the
// argmax key as its token (Impl::NextStep); false where it cannot be: the next position needs a
// block the cache has not given yet, its CUDA graph is not captured, or nothing asks for one.
bool CudaTransformer::queue_next_step() {
  Impl& d = *impl_;
  if (!std::exchange(d.last.valid, false) || !d.use_graphs || d.embedding.rows < local_vocab()) return false;
  Impl::NextStep next = d.last;
  next.valid = true, next.pos += 1;
  if (next.pos >= int64_t(next.table.size()) * KvCache::kDefaultBlockSize || next.pos >= config().max_position_embeddings)
    return false;
  const auto found = d.graphs.find({1, cuda::attention_grid(1, next.pos, attention_shape()), true});
  if (found == d.graphs.end() || d.graph_named_buffers() != d.graph_buffers) return false;
  // Its inputs are the step before's as run_layers laid them out after x's row (position, table
  // offset 0, token id, block table), but for the position, which the first kernel advances, and
  // the token id, which the embedding takes from the key instead: nothing is copied in. That kernel
  // also writes the key where head_argmax reads it, and the host waits for it alone.
  float* dx = d.step_in.get<float>();
  cuda::start_queued_step(d.embedding, d.best.get<uint64_t>(), dx, d.keys.get<uint64_t>(),
                          reinterpret_cast<int32_t*>(dx + config().hidden_size), d.stream);
  SHARDLM_CUDA_CHECK(cudaEventRecord(d.keys_copied, d.stream));
  SHARDLM_CUDA_CHECK(cudaGraphLaunch(found->second.fast, d.stream));
  ++found->second.launches;
  d.ahead = std::move(next);
  return true;
}

}  // namespace shardlm
