// A 16K-token prompt, read in chunks, on PP4 and TP2 of the tiny preset with its context
// extended: the same greedy tokens as one rank, and no single step anywhere runs long. The
// report behind shardlm saw PP fail past ~1,500 tokens because each stage ran its whole prefill
// as one operation; here every step holds one chunk of 512 tokens, and the longest step any rank
// ran is reported and bounded.
#include <gtest/gtest.h>

#include <random>

#include "runtime/cluster.h"
#include "test_models.h"
#include "test_numerics.h"

using namespace shardlm;

namespace {
// Bound on the longest step of any rank. A 512-token chunk at 16K positions costs one rank at
// most ~10 GFLOP here (well under a second on one core of this 2-core machine); an unchunked
// 16K prefill is one step of ~0.6 TFLOP, far over it.
constexpr double kStepBoundSeconds = 3.0;
}  // namespace

TEST(LongPrompt, SixteenThousandTokensOnPp4AndTp2InBoundedSteps) {
  test::TestModelSpec spec;
  spec.context = 16384 + 64;
  const std::string model = test::test_model(spec);
  std::mt19937 rng(16);
  std::uniform_int_distribution<int32_t> id(0, 150000);
  GenerateRequest req;
  req.prompt_ids.resize(16384);
  for (auto& t : req.prompt_ids) t = id(rng);
  req.max_new_tokens = 4;
  req.stop_at_eos = false;

  std::vector<int32_t> first_tokens;
  std::vector<float> first_logits;
  for (auto [pp, tp] : {std::pair{1, 1}, std::pair{4, 1}, std::pair{1, 2}}) {
    SCOPED_TRACE(fmt::format("pp {} tp {}", pp, tp));
    ClusterOptions o;
    o.model_path = model;
    o.pp = pp, o.tp = tp;
    o.context = 16384 + 8;
    o.prefill_chunk = 512;
    o.threads_per_rank = pp * tp == 1 ? 2 : 1;
    Cluster c(o);
    GenerateResult r = c.generate(req);
    double longest = 0;
    for (const auto& rank : c.rank_reports()) longest = std::max(longest, rank["longest_step_s"].get<double>());
    std::printf("pp %d tp %d: 16384-token prefill %.1f s (%.0f tok/s), longest step of any rank %.3f s\n", pp, tp,
                r.prefill_s, 16384 / r.prefill_s, longest);
    EXPECT_LT(longest, kStepBoundSeconds);
    EXPECT_LE(c.last_run().max_step_tokens, 512);
    if (first_tokens.empty()) {
      first_tokens = r.output_ids;
      first_logits = r.first_logits;
    } else {
      EXPECT_EQ(r.output_ids, first_tokens);
      EXPECT_LT(test::max_relative_error(r.first_logits, first_logits), 1e-4);
    }
  }
}
