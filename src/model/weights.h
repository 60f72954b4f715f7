// The weights one rank uses, as views into the mapped model files (no copies except the small
// norm vectors, converted to f32). Every tensor's shape and dtype is checked against the config.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "formats/model_files.h"
#include "kernels/cpu/matmul.h"

namespace shardlm {

struct LayerWeights {
  std::vector<float> attn_norm, mlp_norm;  // [hidden]
  std::vector<float> q_norm, k_norm;       // [head_dim], Qwen3 only
  WeightMatrix q, k, v, o;                 // [heads*head_dim, hidden], [kv*head_dim, hidden] x2, [hidden, heads*head_dim]
  WeightMatrix gate, up, down;             // [ffn, hidden] x2, [hidden, ffn]
};

// Which part of the model this rank holds (the whole model by default).
struct ModelSlice {
  int64_t layer_begin = 0;
  int64_t layer_end = -1;  // -1: to the last layer
  bool embedding = true;   // first pipeline stage
  bool head = true;        // last pipeline stage: final norm and lm_head
};

struct ModelWeights {
  ModelConfig config;
  ModelSlice slice;
  TensorView embedding;          // [vocab, hidden], any dtype
  std::vector<LayerWeights> layers;  // layers[i] is model layer slice.layer_begin + i
  std::vector<float> final_norm;
  WeightMatrix lm_head;          // the embedding itself when tied
  int64_t bytes = 0;             // bytes of tensors this rank uses
};

// Picks this slice's tensors out of `files` and checks them. Throws Error naming the tensor.
ModelWeights load_weights(const ModelFiles& files, ModelSlice slice = {});

// Reads every page of the slice's tensors once (threads in parallel) so load time is paid at
// load, not by the first token.
void prefault_weights(const ModelWeights& w, int threads);

}  // namespace shardlm
