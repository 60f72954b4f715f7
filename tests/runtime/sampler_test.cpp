// The sampler against the rule it implements, written out plainly here: softmax at the
// temperature, the whole vocabulary sorted by probability (ties: lower id first), the smallest
// prefix whose mass reaches top_p kept, one seeded draw over it. The sampler orders only as much of
// the vocabulary as the nucleus needs; its draws must be the same, token for token.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "runtime/sampler.h"

namespace shardlm {
namespace {

int32_t reference_draw(const std::vector<float>& logits, const SamplerOptions& o, std::mt19937_64& rng) {
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<std::pair<float, int32_t>> c(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    c[i] = {std::exp((logits[i] - max_logit) / o.temperature), int32_t(i)};
    total += c[i].first;
  }
  size_t keep = c.size();
  if (o.top_p < 1.0f) {
    std::sort(c.begin(), c.end(), [](auto& a, auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    double cumulative = 0;
    for (keep = 0; keep < c.size();) {
      cumulative += c[keep++].first / total;
      if (cumulative >= o.top_p) break;
    }
    total = 0;
    for (size_t i = 0; i < keep; ++i) total += c[i].first;
  }
  double r = std::uniform_real_distribution<double>(0.0, total)(rng);
  for (size_t i = 0; i < keep; ++i) {
    r -= c[i].first;
    if (r <= 0) return c[i].second;
  }
  return c[keep - 1].second;
}

// Logits of a vocabulary of 151,936 (Qwen3's): `spread` sets how peaked the distribution is (large:
// a few tokens hold the mass, as in a trained model; 0.01: near uniform, as in a random one), with
// some exact ties.
std::vector<float> make_logits(double spread, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, float(spread));
  std::vector<float> logits(151936);
  for (float& l : logits) l = normal(rng);
  for (size_t i = 0; i < logits.size(); i += 97) logits[i] = logits[i / 2];  // ties
  return logits;
}

TEST(Sampler, DrawsAsSortingTheWholeVocabularyWould) {
  for (double spread : {0.01, 1.0, 4.0, 12.0}) {
    const std::vector<float> logits = make_logits(spread, uint32_t(spread * 100));
    for (float top_p : {1e-6f, 0.5f, 0.9f, 0.999f, 1.0f}) {
      for (float temperature : {0.7f, 1.0f}) {
        const SamplerOptions o{temperature, top_p, 1234};
        Sampler sampler(o);
        std::mt19937_64 rng(o.seed);
        for (int draw = 0; draw < 6; ++draw)
          ASSERT_EQ(sampler.sample(logits.data(), int64_t(logits.size())), reference_draw(logits, o, rng))
              << "spread " << spread << ", top_p " << top_p << ", temperature " << temperature << ", draw " << draw;
      }
    }
  }
}

TEST(Sampler, TemperatureZeroIsTheArgmax) {
  std::vector<float> logits = make_logits(1.0, 7);
  logits[4242] = 100.0f;
  Sampler sampler({0.0f, 0.9f, 1});
  EXPECT_EQ(sampler.sample(logits.data(), int64_t(logits.size())), 4242);
}

}  // namespace
}  // namespace shardlm
