// Sampling one token from Qwen3's 151,936 logits at temperature 0.7, top-p 0.9 (the host's work per
// generated token beside the forward pass): logits drawn with a small spread (near uniform, as a
// model of random weights gives) and a large one (a few tokens hold the mass, as a trained one).
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "runtime/sampler.h"

namespace {

void BM_SampleTopP(benchmark::State& state) {
  const double spread = double(state.range(0)) / 100;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, float(spread));
  std::vector<float> logits(151936);
  for (float& l : logits) l = normal(rng);
  shardlm::Sampler sampler({0.7f, 0.9f, 42});
  for (auto _ : state) benchmark::DoNotOptimize(sampler.sample(logits.data(), int64_t(logits.size())));
  state.SetLabel("logit spread " + std::to_string(spread));
}
BENCHMARK(BM_SampleTopP)->Arg(1)->Arg(400)->Arg(1200)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
