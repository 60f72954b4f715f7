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
#include "model/forward_pass.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace shardlm {

class Transformer : public ForwardPass {
 public:
  Transformer(const ModelWeights& weights, ThreadPool& pool);

  void set_all_reduce(AllReduce fn) override { all_reduce_ = std::move(fn); }
  const ModelConfig& config() const override { return w_.config; }
  const ModelWeights& weights() const { return w_; }
  int64_t cache_block_bytes() const override;
  KvCache make_cache(int64_t blocks) override;
  int64_t local_vocab() const override { return w_.slice.vocab_end - w_.slice.vocab_begin; }
  // Token ids -> hidden states x [n][hidden].
  void embed(const int32_t* tokens, int64_t n, float* x) const;
  void run_layers(const int32_t* ids, float* x, std::span<const Segment> segments, KvCache& cache,
                  RowsRead read) override;
  void head(const float* x, std::span<const int64_t> rows, float* logits) override;

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
