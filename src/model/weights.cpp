#include "model/weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
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

// Drops the pages of [p, p+n) from this process's resident set: they are clean file pages this
// rank will not read again (the kernel re-reads them from the file if ever touched).
void release_pages(const uint8_t* p, int64_t n) {
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  uintptr_t begin = (uintptr_t(p) + page - 1) / page * page, end = (uintptr_t(p) + uintptr_t(n)) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

class Loader {
 public:
  Loader(const ModelFiles& files, ModelWeights& w, WeightAccess access) : files_(files), w_(w), access_(access) {}

  // Rows [row_begin, row_end) and columns [col_begin, col_end) of the [rows, cols] matrix `name`.
  // Row slices stay views into the mapped file; column slices are copied out row by row.
  WeightMatrix matrix(const std::string& name, int64_t rows, int64_t cols, int64_t row_begin = 0, int64_t row_end = -1,
                      int64_t col_begin = 0, int64_t col_end = -1) {
    const TensorView& t = require(files_, name, {rows, cols});
    if (row_end < 0) row_end = rows;
    if (col_end < 0) col_end = cols;
    const int64_t block = dtype_block_elems(t.dtype);
    if (block > 1 && cols % block != 0)
      fail("{}: tensor '{}' is {} but has {} columns (not a multiple of {})", files_.description(), name,
           dtype_name(t.dtype), cols, block);
    if (col_begin % block != 0 || (col_end != cols && col_end % block != 0))
      fail("{}: tensor '{}' ({}) cannot be split at column {}: not a block boundary", files_.description(), name,
           dtype_name(t.dtype), col_begin);
    const int64_t row_bytes = dtype_bytes(t.dtype, cols);
    const uint8_t* first = t.bytes() + row_begin * row_bytes;
    const int64_t n_rows = row_end - row_begin, n_cols = col_end - col_begin;
    if (col_begin == 0 && col_end == cols) {
      w_.bytes += n_rows * row_bytes;
      return WeightMatrix{t.dtype, first, n_rows, cols, row_bytes};
    }
    const int64_t slice_bytes = dtype_bytes(t.dtype, n_cols), offset = dtype_bytes(t.dtype, col_begin);
    if (access_ == WeightAccess::CountOnly) {
      w_.bytes += n_rows * slice_bytes;
      return WeightMatrix{};
    }
    std::vector<uint8_t> copy(size_t(n_rows * slice_bytes));
    const int64_t release_every = std::max<int64_t>(1, (8 << 20) / row_bytes);  // keep the transient small
    int64_t released = 0;
    for (int64_t r = 0; r < n_rows; ++r) {
      std::memcpy(copy.data() + r * slice_bytes, first + r * row_bytes + offset, size_t(slice_bytes));
      if (r + 1 - released >= release_every || r + 1 == n_rows) {
        release_pages(first + released * row_bytes, (r + 1 - released) * row_bytes);
        released = r + 1;
      }
    }
    w_.bytes += n_rows * slice_bytes;
    w_.owned.push_back(std::move(copy));
    return WeightMatrix{t.dtype, w_.owned.back().data(), n_rows, n_cols, slice_bytes};
  }

  std::vector<float> vector_f32(const std::string& name, int64_t n) {
    const TensorView& t = require(files_, name, {n});
    if (dtype_block_elems(t.dtype) > 1) fail("{}: norm '{}' must not be quantized", files_.description(), name);
    if (access_ == WeightAccess::CountOnly) {
      w_.bytes += t.nbytes;
      return {};
    }
    std::vector<float> v(static_cast<size_t>(n));
    to_f32(t.dtype, t.data, v.data(), n);
    w_.bytes += t.nbytes;
    return v;
  }

 private:
  const ModelFiles& files_;
  ModelWeights& w_;
  WeightAccess access_;
};

}  // namespace

ModelWeights load_weights(const ModelFiles& files, ModelSlice s, WeightAccess access) {
  ModelWeights w;
  const ModelConfig& c = files.config();
  w.config = c;
  auto resolve = [](int64_t& end, int64_t full) {
    if (end < 0) end = full;
  };
  resolve(s.layer_end, c.num_layers);
  resolve(s.head_end, c.num_heads);
  resolve(s.kv_head_end, c.num_kv_heads);
  resolve(s.ffn_end, c.intermediate_size);
  resolve(s.vocab_end, c.vocab_size);
  SHARDLM_CHECK(s.layer_begin >= 0 && s.layer_begin <= s.layer_end && s.layer_end <= c.num_layers,
                "layer range [{}, {}) outside the model's {} layers", s.layer_begin, s.layer_end, c.num_layers);
  SHARDLM_CHECK(s.head_begin >= 0 && s.head_begin < s.head_end && s.head_end <= c.num_heads, "bad head range [{}, {})",
                s.head_begin, s.head_end);
  const int64_t group = c.num_heads / c.num_kv_heads;
  SHARDLM_CHECK(s.kv_head_begin == s.head_begin / group && s.kv_head_end == (s.head_end - 1) / group + 1,
                "kv head range [{}, {}) does not match query heads [{}, {})", s.kv_head_begin, s.kv_head_end,
                s.head_begin, s.head_end);
  SHARDLM_CHECK(s.ffn_begin >= 0 && s.ffn_begin < s.ffn_end && s.ffn_end <= c.intermediate_size, "bad ffn range [{}, {})",
                s.ffn_begin, s.ffn_end);
  SHARDLM_CHECK(s.vocab_begin >= 0 && s.vocab_begin < s.vocab_end && s.vocab_end <= c.vocab_size,
                "bad vocab range [{}, {})", s.vocab_begin, s.vocab_end);
  w.slice = s;
  // Layers split by heads or features need an all-reduce; a slice of the lm_head rows does not
  // (each rank's logits are whole).
  w.tensor_parallel = s.head_end - s.head_begin < c.num_heads || s.ffn_end - s.ffn_begin < c.intermediate_size;
  const int64_t H = c.hidden_size, F = c.intermediate_size, D = c.head_dim;
  Loader load(files, w, access);

  if (s.embedding || (s.head && c.tie_word_embeddings)) {
    w.embedding = require(files, "model.embed_tokens.weight", {c.vocab_size, H});
    if (dtype_block_elems(w.embedding.dtype) > 1 && H % kQuantBlock != 0)
      fail("{}: the embedding is quantized but hidden size {} is not a multiple of 32", files.description(), H);
  }
  for (int64_t l = s.layer_begin; l < s.layer_end; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights L;
    L.attn_norm = load.vector_f32(p + "input_layernorm.weight", H);
    L.mlp_norm = load.vector_f32(p + "post_attention_layernorm.weight", H);
    if (c.arch == Arch::Qwen3) {
      L.q_norm = load.vector_f32(p + "self_attn.q_norm.weight", D);
      L.k_norm = load.vector_f32(p + "self_attn.k_norm.weight", D);
    }
    const int64_t q_rows = c.num_heads * D, kv_rows = c.num_kv_heads * D;
    L.q = load.matrix(p + "self_attn.q_proj.weight", q_rows, H, s.head_begin * D, s.head_end * D);
    L.k = load.matrix(p + "self_attn.k_proj.weight", kv_rows, H, s.kv_head_begin * D, s.kv_head_end * D);
    L.v = load.matrix(p + "self_attn.v_proj.weight", kv_rows, H, s.kv_head_begin * D, s.kv_head_end * D);
    L.o = load.matrix(p + "self_attn.o_proj.weight", H, q_rows, 0, -1, s.head_begin * D, s.head_end * D);
    L.gate = load.matrix(p + "mlp.gate_proj.weight", F, H, s.ffn_begin, s.ffn_end);
    L.up = load.matrix(p + "mlp.up_proj.weight", F, H, s.ffn_begin, s.ffn_end);
    L.down = load.matrix(p + "mlp.down_proj.weight", H, F, 0, -1, s.ffn_begin, s.ffn_end);
    w.layers.push_back(std::move(L));
  }
  if (s.head) {
    w.final_norm = load.vector_f32("model.norm.weight", H);
    w.lm_head = c.tie_word_embeddings
                    ? load.matrix("model.embed_tokens.weight", c.vocab_size, H, s.vocab_begin, s.vocab_end)
                    : load.matrix("lm_head.weight", c.vocab_size, H, s.vocab_begin, s.vocab_end);
  }
  return w;
}

void check_token_ids(const ModelConfig& config, const int32_t* tokens, int64_t n) {
  for (int64_t t = 0; t < n; ++t)
    SHARDLM_CHECK(tokens[t] >= 0 && tokens[t] < config.vocab_size, "token id {} is outside the vocabulary (size {})",
                  tokens[t], config.vocab_size);
}

void embed_tokens(const ModelWeights& w, const int32_t* tokens, int64_t n, float* x) {
  check_token_ids(w.config, tokens, n);
  const TensorView& e = w.embedding;
  const int64_t H = w.config.hidden_size;
  for (int64_t t = 0; t < n; ++t) to_f32(e.dtype, e.row(tokens[t]), x + t * H, H);
}

void prefault_weights(const ModelWeights& w, int threads) {
  struct Range {
    const uint8_t* p;
    int64_t n;
  };
  std::vector<Range> ranges;
  // Pieces of at most 64 MiB, so one large tensor spreads over all threads. The embedding is not
  // read ahead: a lookup touches only the rows of the tokens it embeds.
  auto add = [&](const WeightMatrix& m) {
    if (!m.data) return;
    const int64_t n = (m.rows - 1) * m.row_stride + dtype_bytes(m.dtype, m.cols);
    for (int64_t off = 0; off < n; off += 64 << 20) ranges.push_back({m.data + off, std::min<int64_t>(64 << 20, n - off)});
  };
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
