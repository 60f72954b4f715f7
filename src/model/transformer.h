// The forward pass of a Llama / Qwen3 decoder over the layers this rank holds. Plain code over
// the kernels, in the order the model computes it; see forward() in transformer.cpp.
#pragma once
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace shardlm {

class Transformer {
 public:
  Transformer(const ModelWeights& weights, ThreadPool& pool);

  const ModelConfig& config() const { return w_.config; }
  const ModelWeights& weights() const { return w_; }
  KvCache make_cache(int64_t capacity) const;

  // Token ids -> hidden states x [n][hidden] (first stage).
  void embed(const int32_t* tokens, int64_t n, float* x) const;
  // Runs this rank's layers on x [n][hidden] in place; the tokens sit at positions
  // start, start+1, ... and their keys/values go into the cache.
  void run_layers(float* x, int64_t n, int64_t start, KvCache& cache);
  // Final norm and lm_head on the last row of x (last stage): logits [vocab].
  void head(const float* x_last, float* logits);

  // All three for a rank holding the whole model: logits of the last of the n tokens.
  void forward(const int32_t* tokens, int64_t n, int64_t start, KvCache& cache, float* logits);

 private:
  void attention_block(const LayerWeights& L, int64_t layer, float* x, int64_t n, KvCache& cache);
  void mlp_block(const LayerWeights& L, float* x, int64_t n);
  void reserve(int64_t n);

  const ModelWeights& w_;
  ThreadPool& pool_;
  std::vector<float> inv_freq_;
  // Scratch for n tokens, grown on demand and reused between calls.
  int64_t scratch_tokens_ = 0;
  std::vector<float> h_, q_, k_, v_, attn_, gate_, up_;
  std::vector<int32_t> positions_;
};

}  // namespace shardlm
