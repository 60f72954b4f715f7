// One process running a whole model: load, then generate token by token. The distributed
// runtime runs the same steps per rank; this is the single-rank reference they are checked against.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "formats/model_files.h"
#include "model/transformer.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace shardlm {

struct EngineOptions {
  std::string model_path;  // Hugging Face folder or .gguf file
  int threads = 0;         // 0: all cores
  int64_t context = 0;     // KV cache positions; 0: min(max_position_embeddings, 4096)
};

struct GenerateRequest {
  std::string prompt;              // text, tokenized with the model's tokenizer...
  std::vector<int32_t> prompt_ids;  // ...or ids given directly (used when not empty)
  int64_t max_new_tokens = 32;
  SamplerOptions sampler;
  bool stop_at_eos = true;
};

struct GenerateResult {
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> output_ids;
  std::string text;              // decoded output tokens
  std::vector<float> first_logits;  // logits after the prompt (the prediction of the first new token)
  double prefill_s = 0, decode_s = 0;
  double prefill_tok_s() const { return prefill_s > 0 ? double(prompt_ids.size()) / prefill_s : 0; }
  // Decode rate counts the tokens made after the first (each needed one forward step).
  double decode_tok_s() const {
    return decode_s > 0 && output_ids.size() > 1 ? double(output_ids.size() - 1) / decode_s : 0;
  }
};

class Engine {
 public:
  explicit Engine(const EngineOptions& options);  // loads the model; throws Error

  // Runs one request from an empty cache. on_token(id, bytes) is called as each token is made.
  GenerateResult generate(const GenerateRequest& request,
                          const std::function<void(int32_t, const std::string&)>& on_token = {});

  const ModelConfig& config() const { return weights_.config; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ModelFiles& files() const { return *files_; }
  ThreadPool& pool() { return pool_; }
  Transformer& transformer() { return *transformer_; }
  double load_s() const { return load_s_; }
  int64_t context() const { return context_; }
  int64_t weight_bytes() const { return weights_.bytes; }

 private:
  ThreadPool pool_;
  std::unique_ptr<ModelFiles> files_;
  ModelWeights weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Transformer> transformer_;
  int64_t context_ = 0;
  double load_s_ = 0;
};

}  // namespace shardlm
