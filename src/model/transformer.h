// The forward pass of a Llama / Qwen3 decoder over the part of the model this rank holds: a
// range of layers (pipeline parallel) and a slice of every layer (tensor parallel). Plain code
// over the kernels, in the order the model computes it; see transformer.cpp.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/thread_pool.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace shardlm {

class Transformer {
 public:
  Transformer(const ModelWeights& weights, ThreadPool& pool);

  // Tensor parallel: sums partial layer outputs over the ranks of this stage (in place, identical
  // result on every rank). Required when the weights are a tensor-parallel slice.
  using AllReduce = std::function<void(float* data, int64_t count)>;
  void set_all_reduce(AllReduce fn) { all_reduce_ = std::move(fn); }

  const ModelConfig& config() const { return w_.config; }
  const ModelWeights& weights() const { return w_; }
  KvCache make_cache(int64_t capacity) const;
  // Logits this rank computes: lm_head rows vocab_begin..vocab_end.
  int64_t local_vocab() const { return w_.slice.vocab_end - w_.slice.vocab_begin; }

  // Token ids -> hidden states x [n][hidden] (first stage).
  void embed(const int32_t* tokens, int64_t n, float* x) const;
  // Runs this rank's layers on x [n][hidden] in place; the tokens sit at positions
  // start, start+1, ... and their keys/values go into the cache.
  void run_layers(float* x, int64_t n, int64_t start, KvCache& cache);
  // Final norm and lm_head on the last row of x (last stage): logits [local_vocab()].
  void head(const float* x_last, float* logits);

  // All three for a rank holding the whole model: logits of the last of the n tokens.
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
  std::vector<int32_t> positions_;
};

}  // namespace shardlm
