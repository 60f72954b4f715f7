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

// Which part of the model this rank holds (the whole model by default). Ranges are
// [begin, end); an end of -1 means "to the end".
struct ModelSlice {
  int64_t layer_begin = 0, layer_end = -1;  // pipeline stage
  bool embedding = true;                    // first stage
  bool head = true;                         // last stage: final norm and lm_head
  // Tensor-parallel share of every layer: query heads, the kv heads they read, MLP features,
  // and lm_head rows (vocabulary ids).
  int64_t head_begin = 0, head_end = -1;
  int64_t kv_head_begin = 0, kv_head_end = -1;
  int64_t ffn_begin = 0, ffn_end = -1;
  int64_t vocab_begin = 0, vocab_end = -1;
};

struct ModelWeights {
  ModelConfig config;
  ModelSlice slice;              // with every -1 resolved
  bool tensor_parallel = false;  // holds only part of each layer
  TensorView embedding;          // [vocab, hidden], any dtype
  std::vector<LayerWeights> layers;  // layers[i] is model layer slice.layer_begin + i
  std::vector<float> final_norm;
  WeightMatrix lm_head;          // the embedding itself when tied (rows vocab_begin..vocab_end)
  int64_t bytes = 0;             // bytes of tensors this rank uses
  // Column slices (tensor parallel o_proj/down_proj) copied out of the mapped file, so the rank
  // keeps only its own bytes resident.
  std::vector<std::vector<uint8_t>> owned;
};

// Load: the tensors are mapped (row slices) or copied (column slices). CountOnly: nothing is read
// or copied (the matrices and norms are left empty); only `bytes` is counted, for planning.
enum class WeightAccess { Load, CountOnly };

// Whether a GPU rank holding `w` copies the embedding table apart from its head: a first stage
// does, unless its head is the whole tied table already.
inline bool embedding_copied(const ModelWeights& w) {
  const bool whole_tied_head = w.config.tie_word_embeddings && w.slice.head && w.slice.vocab_begin == 0 &&
                               w.slice.vocab_end == w.config.vocab_size;
  return w.slice.embedding && !whole_tied_head;
}

// Picks this slice's tensors out of `files` and checks them; resolves the slice's -1 ends.
// Throws Error naming the tensor.
ModelWeights load_weights(const ModelFiles& files, ModelSlice slice = {}, WeightAccess access = WeightAccess::Load);

// Throws Error naming the first token id outside the vocabulary.
void check_token_ids(const ModelConfig& config, const int32_t* tokens, int64_t n);
// Token ids -> hidden states x [n][hidden] (f32) from the embedding; throws Error on an id
// outside the vocabulary.
void embed_tokens(const ModelWeights& w, const int32_t* tokens, int64_t n, float* x);

// Reads every page of the slice's tensors once (threads in parallel) so load time is paid at
// load, not by the first token.
void prefault_weights(const ModelWeights& w, int threads);

}  // namespace shardlm
