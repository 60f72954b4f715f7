#include "model/transformer.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/process_stats.h"
#include "kernels/cpu/ops.h"
#include "model/rope.h"

namespace shardlm {

Transformer::Transformer(const ModelWeights& weights, ThreadPool& pool)
    : w_(weights),
      pool_(pool),
      inv_freq_(rope_inverse_frequencies(weights.config)),
      n_heads_(weights.slice.head_end - weights.slice.head_begin),
      n_kv_heads_(weights.slice.kv_head_end - weights.slice.kv_head_begin),
      ffn_(weights.slice.ffn_end - weights.slice.ffn_begin) {}

KvCache Transformer::make_cache(int64_t blocks) {
  return KvCache(int64_t(w_.layers.size()), n_kv_heads_, config().head_dim, KvCache::kDefaultBlockSize, blocks);
}

int64_t Transformer::cache_block_bytes() const {
  return KvCache::block_bytes(int64_t(w_.layers.size()), n_kv_heads_, config().head_dim, KvCache::kDefaultBlockSize);
}

void Transformer::reserve(int64_t n) {
  if (n <= scratch_tokens_) return;
  const ModelConfig& c = config();
  h_.resize(size_t(n * c.hidden_size));
  q_.resize(size_t(n * n_heads_ * c.head_dim));
  attn_.resize(q_.size());
  k_.resize(size_t(n * n_kv_heads_ * c.head_dim));
  v_.resize(k_.size());
  gate_.resize(size_t(n * ffn_));
  up_.resize(gate_.size());
  if (w_.tensor_parallel) partial_.resize(h_.size());
  positions_.resize(size_t(n));
  slots_.resize(size_t(n));
  scratch_tokens_ = n;
}

void Transformer::embed(const int32_t* tokens, int64_t n, float* x) const { embed_tokens(w_, tokens, n, x); }

void Transformer::project_and_add(const WeightMatrix& w, const float* a, int64_t n, float* x) {
  if (!w_.tensor_parallel) {
    matmul(pool_, a, n, w, x, /*accumulate=*/true);  // residual add fused
    return;
  }
  SHARDLM_CHECK(bool(all_reduce_), "internal: tensor-parallel weights without an all-reduce");
  const int64_t count = n * config().hidden_size;
  matmul(pool_, a, n, w, partial_.data());
  all_reduce_(partial_.data(), count);
  for (int64_t i = 0; i < count; ++i) x[i] += partial_[size_t(i)];
}

void Transformer::attention_block(const LayerWeights& L, int64_t layer, float* x, int64_t n, KvCache& cache) {
  const ModelConfig& c = config();
  const int64_t H = c.hidden_size, D = c.head_dim, kv_dim = n_kv_heads_ * D;
  const float eps = float(c.rms_norm_eps);
  ops::rmsnorm(x, L.attn_norm.data(), h_.data(), n, H, eps);
  matmul_same_input(pool_, h_.data(), n, {{&L.q, q_.data()}, {&L.k, k_.data()}, {&L.v, v_.data()}});
  if (!L.q_norm.empty()) {  // Qwen3: RMSNorm over each head of q and k, before RoPE
    ops::rmsnorm(q_.data(), L.q_norm.data(), q_.data(), n * n_heads_, D, eps);
    ops::rmsnorm(k_.data(), L.k_norm.data(), k_.data(), n * n_kv_heads_, D, eps);
  }
  const bool adjacent = c.rope_style == RopeStyle::Adjacent;
  ops::rope(q_.data(), n, n_heads_, D, positions_.data(), inv_freq_.data(), adjacent);
  ops::rope(k_.data(), n, n_kv_heads_, D, positions_.data(), inv_freq_.data(), adjacent);
  for (int64_t t = 0; t < n; ++t)
    cache.store(layer, slots_[size_t(t)], positions_[size_t(t)], k_.data() + t * kv_dim, v_.data() + t * kv_dim);
  const ops::AttentionShape shape{n_heads_, n_kv_heads_, D, c.num_heads / c.num_kv_heads, w_.slice.head_begin,
                                  w_.slice.kv_head_begin};
  ops::attention(pool_, q_.data(), attention_segments_.data(), int64_t(attention_segments_.size()), cache.k_pool(layer),
                 cache.v_pool(layer), shape, attn_.data());
  project_and_add(L.o, attn_.data(), n, x);
}

void Transformer::mlp_block(const LayerWeights& L, float* x, int64_t n) {
  const ModelConfig& c = config();
  ops::rmsnorm(x, L.mlp_norm.data(), h_.data(), n, c.hidden_size, float(c.rms_norm_eps));
  matmul_same_input(pool_, h_.data(), n, {{&L.gate, gate_.data()}, {&L.up, up_.data()}});
  ops::swiglu(gate_.data(), up_.data(), gate_.data(), n * ffn_);
  project_and_add(L.down, gate_.data(), n, x);
}

int64_t ForwardPass::free_memory_bytes() const { return available_memory_bytes(); }

void ForwardPass::head_argmax(const float* x, std::span<const int64_t> rows, float* values, int32_t* ids) {
  const int64_t V = local_vocab();
  std::vector<float> logits(rows.size() * size_t(V));
  head(x, rows, logits.data());
  for (size_t r = 0; r < rows.size(); ++r) {
    const float* row = logits.data() + r * size_t(V);
    ids[r] = ops::argmax(row, V);
    values[r] = row[ids[r]];
  }
}

int64_t reserve_segments(const ModelConfig& c, std::span<const Segment> segments, KvCache& cache) {
  int64_t n = 0;
  for (const Segment& s : segments) {
    // n_tokens against the room after start: start + n_tokens could overflow.
    SHARDLM_CHECK(s.n_tokens > 0 && s.start >= 0 && s.start <= c.max_position_embeddings &&
                      s.n_tokens <= c.max_position_embeddings - s.start,
                  "{} positions from {} are outside the model's {} positions", s.n_tokens, s.start,
                  c.max_position_embeddings);
    cache.reserve(s.slot, s.start + s.n_tokens);
    n += s.n_tokens;
  }
  return n;
}

void Transformer::run_layers(const int32_t* ids, float* x, std::span<const Segment> segments, KvCache& cache,
                             RowsRead) {
  const int64_t n = reserve_segments(config(), segments, cache);
  if (ids) embed(ids, n, x);
  reserve(n);
  int64_t t = 0;
  attention_segments_.clear();
  for (const Segment& s : segments) {
    attention_segments_.push_back({cache.blocks(s.slot).data(), s.start, s.n_tokens});
    for (int64_t i = 0; i < s.n_tokens; ++i, ++t) {
      positions_[size_t(t)] = int32_t(s.start + i);
      slots_[size_t(t)] = s.slot;
    }
  }
  for (size_t i = 0; i < w_.layers.size(); ++i) {
    attention_block(w_.layers[i], int64_t(i), x, n, cache);
    mlp_block(w_.layers[i], x, n);
  }
}

void Transformer::head(const float* x, std::span<const int64_t> rows, float* logits) {
  const ModelConfig& c = config();
  const int64_t H = c.hidden_size, m = int64_t(rows.size());
  reserve(m);
  for (int64_t i = 0; i < m; ++i)
    ops::rmsnorm(x + rows[size_t(i)] * H, w_.final_norm.data(), h_.data() + i * H, 1, H, float(c.rms_norm_eps));
  matmul(pool_, h_.data(), m, w_.lm_head, logits);
}

void Transformer::forward(const int32_t* tokens, int64_t n, int64_t start, KvCache& cache, float* logits) {
  std::vector<float> x(size_t(n * config().hidden_size));
  const Segment seg{0, start, n};
  const int64_t last = n - 1;
  run_layers(tokens, x.data(), std::span<const Segment>(&seg, 1), cache, RowsRead{false, {&last, 1}});
  head(x.data(), std::span<const int64_t>(&last, 1), logits);
}

}  // namespace shardlm
