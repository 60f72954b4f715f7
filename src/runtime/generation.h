// The request loop shared by every way of running a model (one process, or a cluster of ranks):
// check the request, prefill the prompt, then one step per new token until n tokens or EOS.
// The caller supplies `step`, which runs tokens through the model and returns the next token.
#pragma once
#include <functional>

#include "runtime/engine.h"

namespace shardlm {

struct StepFunctions {
  // A new request needing `capacity` cache positions.
  std::function<void(int64_t capacity, const SamplerOptions&)> begin;
  // Runs n tokens at positions start..; returns the sampled next token, and the full logits
  // when `logits` is not null.
  std::function<int32_t(const int32_t* ids, int64_t n, int64_t start, std::vector<float>* logits)> step;
};

GenerateResult run_generation(const GenerateRequest& request, const Tokenizer& tokenizer, const ModelConfig& config,
                              int64_t context, const StepFunctions& fns,
                              const std::function<void(int32_t, const std::string&)>& on_token);

}  // namespace shardlm
