#include "runtime/engine.h"

#include <algorithm>

#include "core/error.h"
#include "core/log.h"
#include "core/process_stats.h"
#include "runtime/generation.h"

namespace shardlm {

Engine::Engine(const EngineOptions& o) : pool_(o.threads > 0 ? o.threads : ThreadPool::default_threads()) {
  Stopwatch clock;
  files_ = open_model_files(o.model_path);
  weights_ = load_weights(*files_);
  prefault_weights(weights_, pool_.size());
  tokenizer_ = std::make_unique<Tokenizer>(files_->tokenizer());
  transformer_ = std::make_unique<Transformer>(weights_, pool_);
  const int64_t max_pos = config().max_position_embeddings;
  context_ = o.context > 0 ? o.context : std::min<int64_t>(max_pos, 4096);
  SHARDLM_CHECK(context_ <= max_pos, "context {} exceeds the model's max_position_embeddings ({})", context_, max_pos);
  load_s_ = clock.seconds();
  log_info("loaded {}: {} layers, hidden {}, {:.2f} GB of weights in {:.2f} s ({} threads, context {})",
           files_->description(), config().num_layers, config().hidden_size, weights_.bytes / 1e9, load_s_, pool_.size(),
           context_);
}

GenerateResult Engine::generate(const GenerateRequest& req,
                                const std::function<void(int32_t, const std::string&)>& on_token) {
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<Sampler> sampler;
  std::vector<float> logits(size_t(config().vocab_size));
  StepFunctions fns;
  fns.begin = [&](int64_t capacity, const SamplerOptions& options) {
    cache = std::make_unique<KvCache>(transformer_->make_cache(KvCache::blocks_for(capacity, KvCache::kDefaultBlockSize)));
    sampler = std::make_unique<Sampler>(options);
  };
  fns.step = [&](const int32_t* ids, int64_t n, int64_t start, std::vector<float>* out) {
    transformer_->forward(ids, n, start, *cache, logits.data());
    if (out) *out = logits;
    return sampler->sample(logits.data(), config().vocab_size);
  };
  return run_generation(req, *tokenizer_, config(), context_, fns, on_token);
}

}  // namespace shardlm
