// What a caller asks of a model and what comes back, whichever way the model runs (one process:
// Engine; several ranks: Cluster).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace shardlm {

struct GenerateRequest {
  std::string prompt;              // text, tokenized with the model's tokenizer...
  std::vector<int32_t> prompt_ids;  // ...or ids given directly (used when not empty)
  int64_t max_new_tokens = 32;
  SamplerOptions sampler;
  bool stop_at_eos = true;
  // The request becomes visible to the scheduler once this many steps have run (0: at once): a
  // repeatable stand-in for a request arriving while others decode.
  int64_t arrival_step = 0;
  bool want_first_logits = true;  // keep the logits after the prompt in the result
};

struct GenerateResult {
  std::string error;  // set when the request could not run (it then has no tokens)
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> output_ids;
  std::string text;              // decoded output tokens
  std::vector<float> first_logits;  // logits after the prompt (the prediction of the first new token)
  double prefill_s = 0, decode_s = 0;  // admission to first token; first token to last
  double queue_s = 0;                   // arrival to admission
  std::vector<double> token_times;      // when each output token came, seconds after arrival
  double prefill_tok_s() const { return prefill_s > 0 ? double(prompt_ids.size()) / prefill_s : 0; }
  // Decode rate counts the tokens made after the first (each needed one forward step).
  double decode_tok_s() const {
    return decode_s > 0 && output_ids.size() > 1 ? double(output_ids.size() - 1) / decode_s : 0;
  }
};

}  // namespace shardlm
