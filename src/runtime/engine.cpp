#include "runtime/engine.h"

#include <algorithm>

#include "core/error.h"
#include "core/log.h"
#include "core/process_stats.h"

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
  GenerateResult r;
  r.prompt_ids = req.prompt_ids.empty() ? tokenizer_->encode(req.prompt) : req.prompt_ids;
  const int64_t n_prompt = int64_t(r.prompt_ids.size());
  SHARDLM_CHECK(n_prompt > 0, "the prompt is empty");
  SHARDLM_CHECK(n_prompt + req.max_new_tokens <= context_,
                "the prompt has {} tokens and {} more were asked for, but the context holds {} (raise --context, "
                "at most {})",
                n_prompt, req.max_new_tokens, context_, config().max_position_embeddings);
  SHARDLM_CHECK(req.max_new_tokens >= 0, "the number of tokens to generate must be >= 0");

  KvCache cache = transformer_->make_cache(n_prompt + std::max<int64_t>(req.max_new_tokens, 1));
  Sampler sampler(req.sampler);
  std::vector<float> logits(size_t(config().vocab_size));
  const auto& eos = config().eos_token_ids;

  Stopwatch clock;
  transformer_->forward(r.prompt_ids.data(), n_prompt, 0, cache, logits.data());
  r.prefill_s = clock.seconds();
  r.first_logits = logits;
  clock.reset();
  int64_t pos = n_prompt;
  for (int64_t i = 0; i < req.max_new_tokens; ++i) {
    if (i > 0) {
      transformer_->forward(&r.output_ids.back(), 1, pos++, cache, logits.data());
    }
    int32_t next = sampler.sample(logits.data(), config().vocab_size);
    r.output_ids.push_back(next);
    if (on_token) on_token(next, tokenizer_->token_bytes(next));
    if (req.stop_at_eos && std::find(eos.begin(), eos.end(), next) != eos.end()) break;
  }
  r.decode_s = clock.seconds();
  r.text = tokenizer_->decode(r.output_ids);
  return r;
}

}  // namespace shardlm
