// The layer loop of model/transformer.cpp with kernels/cuda in place of kernels/cpu; read the two
// side by side. Weights and the KV cache stay on the device; x crosses PCIe once per call.
#include "model/cuda/cuda_transformer.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <map>

#include "core/error.h"
#include "core/log.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/tensor_core_gemm.h"
#include "model/rope.h"

namespace shardlm {

using cuda::DeviceBuffer;
using cuda::DeviceMatrix;

namespace {

struct DeviceLayer {
  DeviceBuffer attn_norm, mlp_norm, q_norm, k_norm;
  DeviceMatrix q, k, v, o, gate, up, down;
};

}  // namespace

struct CudaTransformer::Impl {
  cudaStream_t stream = nullptr;
  std::vector<DeviceBuffer> weights;  // every matrix's memory
  std::vector<DeviceLayer> layers;
  DeviceBuffer final_norm, inv_freq;
  DeviceMatrix lm_head;
  std::vector<DeviceBuffer> k_pools, v_pools;  // per layer
  int64_t n_heads = 0, n_kv_heads = 0, ffn = 0;
  std::unique_ptr<cuda::TensorCoreGemm> gemm;  // null without cuBLAS
  // Scratch, grown on demand.
  DeviceBuffer x, h, q, k, v, attn, gate, up, partial, tables, offsets, positions, logits, splits, head_x, best;
  std::vector<float> host_partial;
  std::vector<int32_t> host_tables, host_offsets, host_positions;

  // Decode steps replay a CUDA graph of the whole layer loop (one launch instead of ~15 a layer),
  // captured once per (tokens, attention splits) and valid while the buffers it names stay put.
  bool use_graphs = true;
  std::map<std::pair<int64_t, int64_t>, cudaGraphExec_t> graphs;
  std::vector<const void*> graph_buffers;

  ~Impl() {
    drop_graphs();
    if (stream) cudaStreamDestroy(stream);
  }
  void drop_graphs() {
    for (auto& [key, exec] : graphs) cudaGraphExecDestroy(exec);
    graphs.clear();
  }
  // Scratch for `tokens` rows (grown here, not mid-step, so captured graphs stay valid).
  void reserve_scratch(int64_t tokens, int64_t hidden, int64_t q_dim, int64_t kv_dim) {
    for (DeviceBuffer* b : {&x, &h, &partial}) b->grow(size_t(tokens * hidden) * 4);
    for (DeviceBuffer* b : {&q, &attn}) b->grow(size_t(tokens * q_dim) * 4);
    for (DeviceBuffer* b : {&k, &v}) b->grow(size_t(tokens * kv_dim) * 4);
    for (DeviceBuffer* b : {&gate, &up}) b->grow(size_t(tokens * ffn) * 4);
    for (DeviceBuffer* b : {&offsets, &positions}) b->grow(size_t(tokens) * 4);
    if (gemm) gemm->reserve(tokens, std::max({hidden, q_dim, ffn}), std::max({hidden, q_dim, kv_dim, ffn}));
  }
  // Runs `enqueue` (the layer loop, on `stream`) through the graph of `key`, capturing it first.
  template <class F>
  void replay(std::pair<int64_t, int64_t> key, F&& enqueue) {
    const std::vector<const void*> buffers{x.get(),    h.get(),      q.get(),         k.get(),
                                           v.get(),    attn.get(),   gate.get(),      up.get(),
                                           tables.get(), offsets.get(), positions.get(), splits.get(),
                                           gemm ? gemm->scratch().first : nullptr,
                                           gemm ? gemm->scratch().second : nullptr};
    if (buffers != graph_buffers || graphs.size() >= 64) drop_graphs(), graph_buffers = buffers;
    auto found = graphs.find(key);
    if (found == graphs.end()) {
      cudaGraph_t graph = nullptr;
      SHARDLM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      try {
        enqueue();
      } catch (...) {
        if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
        throw;
      }
      SHARDLM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
      cudaGraphExec_t exec = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      SHARDLM_CUDA_CHECK(e);
      found = graphs.emplace(key, exec).first;
    }
    SHARDLM_CUDA_CHECK(cudaGraphLaunch(found->second, stream));
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
  DeviceMatrix upload_matrix(const WeightMatrix& m) {
    if (!m.data || m.rows == 0) return {};
    const int64_t row_bytes = dtype_bytes(m.dtype, m.cols);
    DeviceBuffer& b = weights.emplace_back(size_t(row_bytes * m.rows));
    SHARDLM_CUDA_CHECK(cudaMemcpy2D(b.get(), size_t(row_bytes), m.data, size_t(m.row_stride), size_t(row_bytes),
                                    size_t(m.rows), cudaMemcpyHostToDevice));
    return {m.dtype, b.get(), m.rows, m.cols};
  }

  // y (+)= x W^T: many rows on the tensor cores, a decode step's few by streaming W (and every
  // product of f16 or quantized weights: cuBLAS takes them only once dequantized, a next step).
  void matmul(const float* x_rows, int64_t n, const DeviceMatrix& w, float* y, bool accumulate) {
    const bool tensor_cores = w.dtype == DType::BF16 || w.dtype == DType::F32;
    if (gemm && tensor_cores && n >= cuda::TensorCoreGemm::kMinRows) gemm->run(x_rows, n, w, y, accumulate);
    else cuda::matmul(x_rows, n, w, y, accumulate, stream);
  }
};

CudaTransformer::CudaTransformer(const ModelWeights& w, int rank) : w_(w), impl_(std::make_unique<Impl>()) {
  int count = 0;
  SHARDLM_CUDA_CHECK(cudaGetDeviceCount(&count));
  SHARDLM_CHECK(count > 0, "--device cuda: no CUDA device is visible");
  device_ = rank % count;
  SHARDLM_CUDA_CHECK(cudaSetDevice(device_));
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
    D.q = d.upload_matrix(L.q), D.k = d.upload_matrix(L.k), D.v = d.upload_matrix(L.v), D.o = d.upload_matrix(L.o);
    D.gate = d.upload_matrix(L.gate), D.up = d.upload_matrix(L.up), D.down = d.upload_matrix(L.down);
  }
  if (w.slice.head) {
    d.final_norm = d.upload_vector(w.final_norm);
    d.lm_head = d.upload_matrix(w.lm_head);
  }
  d.inv_freq = d.upload_vector(rope_inverse_frequencies(w.config));
  const char* graphs = std::getenv("SHARDLM_CUDA_GRAPHS");  // 0: launch every kernel (to compare)
  d.use_graphs = !(graphs && std::string(graphs) == "0");
  std::string why;
  d.gemm = cuda::TensorCoreGemm::create(d.stream, &why);
  if (!d.gemm) log_info("rank {}: prefill without tensor cores: {}", rank, why);
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
  d.tables.grow(size_t(blocks) * 4);  // every block in one step's tables at most
  const ModelConfig& c = config();
  d.reserve_scratch(cuda::TensorCoreGemm::kMinAttentionRows, c.hidden_size, d.n_heads * c.head_dim, d.n_kv_heads * c.head_dim);
  for (size_t l = 0; l < w_.layers.size(); ++l) {
    d.k_pools.emplace_back(layer_bytes);
    d.v_pools.emplace_back(layer_bytes);
  }
  return KvCache(int64_t(w_.layers.size()), d.n_kv_heads, config().head_dim, KvCache::kDefaultBlockSize, blocks,
                 /*host_pools=*/false);
}

int64_t CudaTransformer::device_bytes() const {
  int64_t total = 0;
  for (const DeviceBuffer& b : impl_->weights) total += int64_t(b.bytes());
  for (const auto* pools : {&impl_->k_pools, &impl_->v_pools})
    for (const DeviceBuffer& b : *pools) total += int64_t(b.bytes());
  return total;
}

void CudaTransformer::embed(const int32_t* tokens, int64_t n, float* x) const { embed_tokens(w_, tokens, n, x); }

void CudaTransformer::run_layers(float* x, std::span<const Segment> segments, KvCache& cache) {
  Impl& d = *impl_;
  const ModelConfig& c = config();
  const int64_t H = c.hidden_size, D = c.head_dim, q_dim = d.n_heads * D, kv_dim = d.n_kv_heads * D;
  const float eps = float(c.rms_norm_eps);
  const cudaStream_t s = d.stream;
  // Where each token's keys and values go: its position and its sequence's block table.
  const int64_t n = reserve_segments(c, segments, cache);
  d.host_tables.clear(), d.host_offsets.clear(), d.host_positions.clear();
  bool long_segment = false;  // one that takes the tensor cores' attention
  for (const Segment& seg : segments) {
    const int32_t offset = int32_t(d.host_tables.size());
    long_segment |= d.gemm && seg.n_tokens >= cuda::TensorCoreGemm::kMinAttentionRows;
    const std::vector<int32_t>& blocks = cache.blocks(seg.slot);
    d.host_tables.insert(d.host_tables.end(), blocks.begin(), blocks.end());
    for (int64_t i = 0; i < seg.n_tokens; ++i) {
      d.host_offsets.push_back(offset);
      d.host_positions.push_back(int32_t(seg.start + i));
    }
  }
  const int64_t max_pos = *std::max_element(d.host_positions.begin(), d.host_positions.end());
  d.reserve_scratch(n, H, q_dim, kv_dim);
  d.upload(d.tables, d.host_tables.data(), d.host_tables.size());
  d.upload(d.offsets, d.host_offsets.data(), d.host_offsets.size());
  d.upload(d.positions, d.host_positions.data(), d.host_positions.size());
  d.upload(d.x, x, size_t(n * H));
  float* dx = d.x.get<float>();

  // x += W a, summed over the stage's TP ranks when this rank holds a slice: on the GPU through
  // the device all-reduce when there is one, else through the host.
  auto project_and_add = [&](const DeviceMatrix& m, const float* a) {
    if (!w_.tensor_parallel) {
      d.matmul(a, n, m, dx, /*accumulate=*/true);
      return;
    }
    d.matmul(a, n, m, d.partial.get<float>(), false);
    if (device_all_reduce_) {
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
  const cuda::AttentionShape shape{d.n_heads, c.num_heads / c.num_kv_heads, w_.slice.head_begin, w_.slice.kv_head_begin,
                                   kv_shape};
  // Attention: a step of short segments (decode) in one launch of the paged kernel; with a long one
  // (prefill), each long segment on the tensor cores and each short one on the kernel.
  const int64_t splits = cuda::attention_splits(n, max_pos, shape);
  std::vector<int64_t> segment_splits;  // with a long segment: each short one's own split
  int64_t partial_floats = cuda::attention_partial_floats(n, splits, shape);
  if (long_segment) {
    for (const Segment& seg : segments) {
      segment_splits.push_back(cuda::attention_splits(seg.n_tokens, seg.start + seg.n_tokens - 1, shape));
      partial_floats = std::max(partial_floats, cuda::attention_partial_floats(seg.n_tokens, segment_splits.back(), shape));
    }
  }
  d.splits.grow(size_t(partial_floats) * 4 + 4);
  auto attend = [&](const float* q_rows, const float* k_pool, const float* v_pool, float* out) {
    if (!long_segment) {
      cuda::attention(q_rows, k_pool, v_pool, d.tables.get<int32_t>(), d.offsets.get<int32_t>(),
                      d.positions.get<int32_t>(), n, splits, shape, d.splits.get<float>(), out, s);
      return;
    }
    int64_t t = 0;
    for (size_t i = 0; i < segments.size(); ++i) {
      const Segment& seg = segments[i];
      if (seg.n_tokens >= cuda::TensorCoreGemm::kMinAttentionRows) {
        const int32_t table = d.host_offsets[size_t(t)];  // where this segment's block ids start
        d.gemm->attention(q_rows + t * q_dim, k_pool, v_pool, d.tables.get<int32_t>() + table, seg.start, seg.n_tokens,
                          shape, out + t * q_dim);
      } else {
        cuda::attention(q_rows + t * q_dim, k_pool, v_pool, d.tables.get<int32_t>(), d.offsets.get<int32_t>() + t,
                        d.positions.get<int32_t>() + t, seg.n_tokens, segment_splits[i], shape, d.splits.get<float>(),
                        out + t * q_dim, s);
      }
      t += seg.n_tokens;
    }
  };
  float *h = d.h.get<float>(), *q = d.q.get<float>(), *k = d.k.get<float>(), *v = d.v.get<float>();
  const int32_t *tables = d.tables.get<int32_t>(), *offsets = d.offsets.get<int32_t>(), *pos = d.positions.get<int32_t>();
  auto enqueue_layers = [&] {
    for (size_t l = 0; l < d.layers.size(); ++l) {
      const DeviceLayer& L = d.layers[l];
      cuda::rmsnorm(dx, L.attn_norm.get<float>(), h, n, H, eps, s);
      d.matmul(h, n, L.q, q, false);
      d.matmul(h, n, L.k, k, false);
      d.matmul(h, n, L.v, v, false);
      if (L.q_norm.bytes()) {  // Qwen3: RMSNorm over each head of q and k, before RoPE
        cuda::rmsnorm(q, L.q_norm.get<float>(), q, n * d.n_heads, D, eps, s);
        cuda::rmsnorm(k, L.k_norm.get<float>(), k, n * d.n_kv_heads, D, eps, s);
      }
      cuda::rope(q, n, d.n_heads, D, pos, d.inv_freq.get<float>(), adjacent, s);
      cuda::rope(k, n, d.n_kv_heads, D, pos, d.inv_freq.get<float>(), adjacent, s);
      float *k_pool = d.k_pools[l].get<float>(), *v_pool = d.v_pools[l].get<float>();
      cuda::store_kv(k_pool, v_pool, k, v, tables, offsets, pos, n, kv_shape, s);
      attend(q, k_pool, v_pool, d.attn.get<float>());
      project_and_add(L.o, d.attn.get<float>());

      cuda::rmsnorm(dx, L.mlp_norm.get<float>(), h, n, H, eps, s);
      d.matmul(h, n, L.gate, d.gate.get<float>(), false);
      d.matmul(h, n, L.up, d.up.get<float>(), false);
      cuda::swiglu(d.gate.get<float>(), d.up.get<float>(), d.gate.get<float>(), n * d.ffn, s);
      project_and_add(L.down, d.gate.get<float>());
    }
  };
  // Decode steps (and short chunks) as graphs: not the tensor cores' attention (its launches per
  // head group and its scratch vary with the context), nor tensor-parallel sums (the host's cannot
  // be captured; NCCL's can, a next step).
  if (d.use_graphs && !long_segment && !w_.tensor_parallel) d.replay({n, splits}, enqueue_layers);
  else enqueue_layers();
  if (device_all_reduce_) device_all_reduce_->wait(s);  // bounded, unlike a copy that waits on peers
  SHARDLM_CUDA_CHECK(cudaMemcpyAsync(x, dx, size_t(n * H) * 4, cudaMemcpyDeviceToHost, s));
  SHARDLM_CUDA_CHECK(cudaStreamSynchronize(s));
}

// Final norm and lm_head of the given rows on the device; logits stay there (d.logits).
void CudaTransformer::head_on_device(const float* x, std::span<const int64_t> rows) {
  Impl& d = *impl_;
  const ModelConfig& c = config();
  const int64_t H = c.hidden_size, m = int64_t(rows.size()), V = local_vocab();
  d.host_partial.resize(size_t(m * H));
  for (int64_t i = 0; i < m; ++i) std::copy_n(x + rows[size_t(i)] * H, H, d.host_partial.data() + i * H);
  d.upload(d.head_x, d.host_partial.data(), size_t(m * H));
  cuda::rmsnorm(d.head_x.get<float>(), d.final_norm.get<float>(), d.head_x.get<float>(), m, H, float(c.rms_norm_eps),
                d.stream);
  d.logits.grow(size_t(m * V) * 4);
  d.matmul(d.head_x.get<float>(), m, d.lm_head, d.logits.get<float>(), false);
}

void CudaTransformer::head(const float* x, std::span<const int64_t> rows, float* logits) {
  if (rows.empty()) return;
  head_on_device(x, rows);
  Impl& d = *impl_;
  const size_t bytes = rows.size() * size_t(local_vocab()) * 4;
  SHARDLM_CUDA_CHECK(cudaMemcpyAsync(logits, d.logits.get(), bytes, cudaMemcpyDeviceToHost, d.stream));
  SHARDLM_CUDA_CHECK(cudaStreamSynchronize(d.stream));
}

// Greedy steps: the argmax on the device, so only 8 bytes a row cross PCIe (not the whole row).
void CudaTransformer::head_argmax(const float* x, std::span<const int64_t> rows, float* values, int32_t* ids) {
  if (rows.empty()) return;
  head_on_device(x, rows);
  Impl& d = *impl_;
  const int64_t m = int64_t(rows.size());
  d.best.grow(size_t(m) * 8);
  cuda::argmax_rows(d.logits.get<float>(), m, local_vocab(), d.best.get<float>(), d.best.get<int32_t>() + m, d.stream);
  SHARDLM_CUDA_CHECK(cudaMemcpyAsync(values, d.best.get<float>(), size_t(m) * 4, cudaMemcpyDeviceToHost, d.stream));
  SHARDLM_CUDA_CHECK(cudaMemcpyAsync(ids, d.best.get<int32_t>() + m, size_t(m) * 4, cudaMemcpyDeviceToHost, d.stream));
  SHARDLM_CUDA_CHECK(cudaStreamSynchronize(d.stream));
}

}  // namespace shardlm
