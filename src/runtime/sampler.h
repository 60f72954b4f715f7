// Picks the next token from the logits: greedy at temperature 0, otherwise temperature plus
// nucleus (top-p) sampling with a seeded generator so runs are repeatable.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace shardlm {

struct SamplerOptions {
  float temperature = 0.0f;  // 0 = greedy
  float top_p = 1.0f;        // keep the smallest set of tokens whose probability reaches top_p
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& options);
  int32_t sample(const float* logits, int64_t vocab_size);

 private:
  SamplerOptions options_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // reused between calls
};

}  // namespace shardlm
