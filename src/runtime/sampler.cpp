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
    // Ordered by probability (ties: lower id first) only as far as the nucleus reaches: the top
    // 128 first; a trained model's nucleus is a few tokens, and sorting all of Qwen3's 151,936
    // takes about 15 ms a token (a GPU decodes one in 1). When they fall short, 8 times as many,
    // or everything once their mass says the nucleus is larger (the rest are no likelier, so it
    // holds at least k * top_p / mass(top k) tokens). A partial sort's first k are a full sort's:
    // the draw is the same as sorting everything.
    auto more_likely = [](auto& a, auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
    const size_t n = candidates_.size();
    for (size_t k = std::min<size_t>(128, n);;) {
      if (k == n) std::sort(candidates_.begin(), candidates_.end(), more_likely);
      else std::partial_sort(candidates_.begin(), candidates_.begin() + ptrdiff_t(k), candidates_.end(), more_likely);
      double cumulative = 0;
      for (keep = 0; keep < k;) {
        cumulative += candidates_[keep++].first / total;
        if (cumulative >= options_.top_p) break;
      }
      if (cumulative >= options_.top_p || k == n) break;
      const double at_least = double(k) * options_.top_p / cumulative;
      k = at_least > double(8 * k) ? n : std::min(8 * k, n);
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
