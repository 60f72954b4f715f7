#include "model/weights.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "core/error.h"

namespace shardlm {

namespace {

const TensorView& require(const ModelFiles& files, const std::string& name, std::vector<int64_t> shape) {
  const TensorView* t = files.find(name);
  if (!t) fail("{}: tensor '{}' is missing", files.description(), name);
  if (t->shape != shape)
    fail("{}: tensor '{}' has shape {} but config.json implies {}", files.description(), name, shape_string(t->shape),
         shape_string(shape));
  return *t;
}

WeightMatrix matrix(const ModelFiles& files, const std::string& name, int64_t rows, int64_t cols, int64_t* bytes) {
  const TensorView& t = require(files, name, {rows, cols});
  if (dtype_block_elems(t.dtype) > 1 && cols % kQuantBlock != 0)
    fail("{}: tensor '{}' is {} but has {} columns (not a multiple of 32)", files.description(), name,
         dtype_name(t.dtype), cols);
  *bytes += t.nbytes;
  return WeightMatrix{t.dtype, t.bytes(), rows, cols, dtype_bytes(t.dtype, cols)};
}

std::vector<float> vector_f32(const ModelFiles& files, const std::string& name, int64_t n, int64_t* bytes) {
  const TensorView& t = require(files, name, {n});
  if (dtype_block_elems(t.dtype) > 1) fail("{}: norm '{}' must not be quantized", files.description(), name);
  std::vector<float> v(static_cast<size_t>(n));
  to_f32(t.dtype, t.data, v.data(), n);
  *bytes += t.nbytes;
  return v;
}

}  // namespace

ModelWeights load_weights(const ModelFiles& files, ModelSlice slice) {
  ModelWeights w;
  const ModelConfig& c = files.config();
  w.config = c;
  if (slice.layer_end < 0) slice.layer_end = c.num_layers;
  SHARDLM_CHECK(slice.layer_begin >= 0 && slice.layer_begin <= slice.layer_end && slice.layer_end <= c.num_layers,
                "layer range [{}, {}) outside the model's {} layers", slice.layer_begin, slice.layer_end, c.num_layers);
  w.slice = slice;
  const int64_t H = c.hidden_size, F = c.intermediate_size, D = c.head_dim;
  const int64_t q_rows = c.num_heads * D, kv_rows = c.num_kv_heads * D;
  int64_t* bytes = &w.bytes;

  if (slice.embedding || (slice.head && c.tie_word_embeddings)) {
    w.embedding = require(files, "model.embed_tokens.weight", {c.vocab_size, H});
    if (slice.embedding) *bytes += w.embedding.nbytes;
  }
  for (int64_t l = slice.layer_begin; l < slice.layer_end; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights L;
    L.attn_norm = vector_f32(files, p + "input_layernorm.weight", H, bytes);
    L.mlp_norm = vector_f32(files, p + "post_attention_layernorm.weight", H, bytes);
    if (c.arch == Arch::Qwen3) {
      L.q_norm = vector_f32(files, p + "self_attn.q_norm.weight", D, bytes);
      L.k_norm = vector_f32(files, p + "self_attn.k_norm.weight", D, bytes);
    }
    L.q = matrix(files, p + "self_attn.q_proj.weight", q_rows, H, bytes);
    L.k = matrix(files, p + "self_attn.k_proj.weight", kv_rows, H, bytes);
    L.v = matrix(files, p + "self_attn.v_proj.weight", kv_rows, H, bytes);
    L.o = matrix(files, p + "self_attn.o_proj.weight", H, q_rows, bytes);
    L.gate = matrix(files, p + "mlp.gate_proj.weight", F, H, bytes);
    L.up = matrix(files, p + "mlp.up_proj.weight", F, H, bytes);
    L.down = matrix(files, p + "mlp.down_proj.weight", H, F, bytes);
    w.layers.push_back(std::move(L));
  }
  if (slice.head) {
    w.final_norm = vector_f32(files, "model.norm.weight", H, bytes);
    if (c.tie_word_embeddings) {
      const TensorView& e = w.embedding;
      w.lm_head = WeightMatrix{e.dtype, e.bytes(), c.vocab_size, H, dtype_bytes(e.dtype, H)};
      if (!slice.embedding) *bytes += e.nbytes;
    } else {
      w.lm_head = matrix(files, "lm_head.weight", c.vocab_size, H, bytes);
    }
  }
  return w;
}

void prefault_weights(const ModelWeights& w, int threads) {
  struct Range {
    const uint8_t* p;
    int64_t n;
  };
  std::vector<Range> ranges;
  // Pieces of at most 64 MiB, so one large tensor (the embedding) spreads over all threads.
  auto add_bytes = [&](const uint8_t* p, int64_t n) {
    for (int64_t off = 0; off < n; off += 64 << 20) ranges.push_back({p + off, std::min<int64_t>(64 << 20, n - off)});
  };
  auto add = [&](const WeightMatrix& m) {
    if (m.data) add_bytes(m.data, (m.rows - 1) * m.row_stride + dtype_bytes(m.dtype, m.cols));
  };
  if (w.slice.embedding) add_bytes(w.embedding.bytes(), w.embedding.nbytes);
  for (const auto& L : w.layers)
    for (const WeightMatrix* m : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) add(*m);
  if (w.slice.head) add(w.lm_head);

  const int64_t page = ::sysconf(_SC_PAGESIZE);
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> sink{0};
  auto work = [&] {
    uint64_t s = 0;
    for (size_t i; (i = next.fetch_add(1)) < ranges.size();) {
      const volatile uint8_t* p = ranges[i].p;
      for (int64_t off = 0; off < ranges[i].n; off += page) s += p[off];
    }
    sink += s;
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
}

}  // namespace shardlm
