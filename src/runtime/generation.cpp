#include "runtime/generation.h"

#include <algorithm>

#include "core/error.h"
#include "core/process_stats.h"

namespace shardlm {

GenerateResult run_generation(const GenerateRequest& req, const Tokenizer& tokenizer, const ModelConfig& config,
                              int64_t context, const StepFunctions& fns,
                              const std::function<void(int32_t, const std::string&)>& on_token) {
  GenerateResult r;
  r.prompt_ids = req.prompt_ids.empty() ? tokenizer.encode(req.prompt) : req.prompt_ids;
  const int64_t n_prompt = int64_t(r.prompt_ids.size());
  SHARDLM_CHECK(n_prompt > 0, "the prompt is empty");
  SHARDLM_CHECK(req.max_new_tokens >= 0, "the number of tokens to generate must be >= 0");
  SHARDLM_CHECK(n_prompt + req.max_new_tokens <= context,
                "the prompt has {} tokens and {} more were asked for, but the context holds {} (raise --context, "
                "at most {})",
                n_prompt, req.max_new_tokens, context, config.max_position_embeddings);
  for (int32_t id : r.prompt_ids)
    SHARDLM_CHECK(id >= 0 && id < config.vocab_size, "token id {} is outside the vocabulary (size {})", id,
                  config.vocab_size);

  fns.begin(n_prompt + std::max<int64_t>(req.max_new_tokens, 1), req.sampler);
  const auto& eos = config.eos_token_ids;
  Stopwatch clock;
  int32_t next = fns.step(r.prompt_ids.data(), n_prompt, 0, &r.first_logits);
  r.prefill_s = clock.seconds();
  clock.reset();
  for (int64_t i = 0; i < req.max_new_tokens; ++i) {
    if (i > 0) next = fns.step(&r.output_ids.back(), 1, n_prompt + i - 1, nullptr);
    r.output_ids.push_back(next);
    if (on_token) on_token(next, tokenizer.token_bytes(next));
    if (req.stop_at_eos && std::find(eos.begin(), eos.end(), next) != eos.end()) break;
  }
  r.decode_s = clock.seconds();
  r.text = tokenizer.decode(r.output_ids);
  return r;
}

}  // namespace shardlm
