#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/cpu/ops.h"

namespace shardlm {

Sampler::Sampler(const SamplerOptions& options) : options_(options), rng_(options.seed) {
  SHARDLM_CHECK(options.temperature >= 0 && std::isfinite(options.temperature),
                "temperature must be >= 0 (got {})", options.temperature);
  SHARDLM_CHECK(options.top_p > 0 && options.top_p <= 1, "top-p must be in (0, 1] (got {})", options.top_p);
}

int32_t Sampler::sample(const float* logits, int64_t vocab_size) {
  if (options_.temperature == 0.0f) return ops::argmax(logits, vocab_size);
  float max_logit = logits[ops::argmax(logits, vocab_size)];
  candidates_.resize(size_t(vocab_size));
  double total = 0;
  for (int64_t i = 0; i < vocab_size; ++i) {
    float p = std::exp((logits[i] - max_logit) / options_.temperature);
    candidates_[size_t(i)] = {p, int32_t(i)};
    total += p;
  }
  size_t keep = candidates_.size();
  if (options_.top_p < 1.0f) {
    // Sort by probability only as far as needed: most of the mass sits in few tokens.
    std::sort(candidates_.begin(), candidates_.end(), [](auto& a, auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    double cumulative = 0;
    for (keep = 0; keep < candidates_.size();) {
      cumulative += candidates_[keep++].first / total;
      if (cumulative >= options_.top_p) break;
    }
    total = 0;
    for (size_t i = 0; i < keep; ++i) total += candidates_[i].first;
  }
  double r = std::uniform_real_distribution<double>(0.0, total)(rng_);
  for (size_t i = 0; i < keep; ++i) {
    r -= candidates_[i].first;
    if (r <= 0) return candidates_[i].second;
  }
  return candidates_[keep - 1].second;
}

}  // namespace shardlm
