// The forward pass of a Llama / Qwen3 decoder over the part of the model this rank holds: a
// range of layers (pipeline parallel) and a slice of every layer (tensor parallel). One call runs
// a batch: several sequences, each a run of consecutive tokens (a prefill chunk or one decode
// token), stacked into one activation matrix so every weight is read once for the whole batch.
// Plain code over the kernels, in the order the model computes it; see transformer.cpp.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace shardlm {

// Tokens [start, start + n_tokens) of the sequence in cache slot `slot`.
struct Segment {
  int32_t slot = 0;
  int64_t start = 0;
  int64_t n_tokens = 0;
};

class Transformer {
 public:
  Transformer(const ModelWeights& weights, ThreadPool& pool);

  // Tensor parallel: sums partial layer outputs over the ranks of this stage (in place, identical
  // result on every rank). Required when the weights are a tensor-parallel slice.
  using AllReduce = std::function<void(float* data, int64_t count)>;
  void set_all_reduce(AllReduce fn) { all_reduce_ = std::move(fn); }

  const ModelConfig& config() const { return w_.config; }
  const ModelWeights& weights() const { return w_; }
  // A KV cache for this rank's layers: `blocks` blocks of KvCache::kDefaultBlockSize positions.
  KvCache make_cache(int64_t blocks) const;
  // Bytes one cache block costs on this rank.
  int64_t cache_block_bytes() const;
  // Logits this rank computes: lm_head rows vocab_begin..vocab_end.
  int64_t local_vocab() const { return w_.slice.vocab_end - w_.slice.vocab_begin; }

  // Token ids -> hidden states x [n][hidden] (first stage).
  void embed(const int32_t* tokens, int64_t n, float* x) const;
  // Runs this rank's layers on x [total tokens][hidden] in place. The segments' tokens are the
  // rows of x in order; their keys/values go into the cache (reserved here, growing each sequence).
  void run_layers(float* x, std::span<const Segment> segments, KvCache& cache);
  // Final norm and lm_head on the given rows of x (last stage): logits [rows][local_vocab()].
  void head(const float* x, std::span<const int64_t> rows, float* logits);

  // One sequence in slot 0 on a rank holding the whole model: logits of the last of the n tokens.
  void forward(const int32_t* tokens, int64_t n, int64_t start, KvCache& cache, float* logits);

 private:
  void attention_block(const LayerWeights& L, int64_t layer, float* x, int64_t n, KvCache& cache);
  void mlp_block(const LayerWeights& L, float* x, int64_t n);
  // x += W a, summed over tensor-parallel ranks when the rank holds a slice.
  void project_and_add(const WeightMatrix& w, const float* a, int64_t n, float* x);
  void reserve(int64_t n);

  const ModelWeights& w_;
  ThreadPool& pool_;
  AllReduce all_reduce_;
  std::vector<float> inv_freq_;
  int64_t n_heads_, n_kv_heads_, ffn_;  // this rank's share
  // Scratch for n tokens, grown on demand and reused between calls.
  int64_t scratch_tokens_ = 0;
  std::vector<float> h_, q_, k_, v_, attn_, gate_, up_, partial_;
  std::vector<int32_t> positions_, slots_;  // per token of the current batch
  std::vector<ops::AttentionSegment> attention_segments_;
};

}  // namespace shardlm
