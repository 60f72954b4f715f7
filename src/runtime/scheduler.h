// Rank 0's scheduler: turns requests into steps. Each step is one batch through the model: one
// token of every decoding sequence (as many as --max-batch allows) plus at most one prefill chunk
// of a sequence still reading its prompt, so running streams keep flowing while a new prompt is
// read, and no step processes more than one chunk. New requests join between steps (continuous
// batching) when a cache slot and enough KV blocks are free; otherwise they wait in order.
// Under PP up to `pipeline_depth` steps are in flight, each with its own micro-batch of decoding
// sequences, so every stage has work once the pipeline is full.
#pragma once
#include <functional>
#include <vector>

#include "runtime/request.h"
#include "runtime/rank.h"

namespace shardlm {

struct SchedulerOptions {
  int max_batch = 1;            // sequences at once (must not exceed the rank's cache slots)
  int64_t prefill_chunk = 256;  // prompt tokens per step; 0: the whole prompt in one step
  int64_t context = 4096;       // positions one sequence may use
  int pipeline_depth = 1;       // steps in flight (the number of pipeline stages)
};

struct SchedulerStats {
  int64_t steps = 0, prompt_tokens = 0, generated_tokens = 0, max_step_tokens = 0;
  double seconds = 0;
  double generated_tok_s() const { return seconds > 0 ? double(generated_tokens) / seconds : 0; }
};

// on_token(request index, token id, token bytes)
using TokenCallback = std::function<void(size_t, int32_t, const std::string&)>;

class Scheduler {
 public:
  Scheduler(Rank& rank0, const Tokenizer& tokenizer, const SchedulerOptions& options);
  std::vector<GenerateResult> run(const std::vector<GenerateRequest>& requests, const TokenCallback& on_token = {});
  const SchedulerStats& stats() const { return stats_; }

 private:
  Rank& rank_;
  const Tokenizer& tokenizer_;
  SchedulerOptions options_;
  SchedulerStats stats_;
};

}  // namespace shardlm
