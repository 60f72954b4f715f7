// Chunked prefill, batching and continuous batching against the plain one-request run: the same
// logits (within f32 rounding of a different summation order) and the same greedy tokens.
#include <gtest/gtest.h>

#include "runtime/cluster.h"
#include "runtime/engine.h"
#include "test_models.h"
#include "test_numerics.h"

using namespace shardlm;

namespace {

const std::vector<std::string> kPrompts = {
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "<|im_start|>user\nWrite a haiku about distributed inference.<|im_end|>\n<|im_start|>assistant\n",
    "数据并行和张量并行的区别是什么？",
    "Once upon a time, in a cluster far away, five machines tried to hold one model.",
    "1, 2, 3, 5, 8, 13, 21, 34, 55,",
    "Hello",
    "PP or TP? The answer depends on the link: over RDMA they decode at nearly the same speed.",
};

GenerateRequest request(const std::string& prompt, int64_t n, int64_t arrival = 0) {
  GenerateRequest r;
  r.prompt = prompt;
  r.max_new_tokens = n;
  r.stop_at_eos = false;
  r.arrival_step = arrival;
  return r;
}

ClusterOptions options(int pp, int tp, int64_t chunk, int max_batch = 1) {
  ClusterOptions o;
  o.model_path = test::test_model({});
  o.pp = pp, o.tp = tp;
  o.context = 512;
  o.threads_per_rank = 1;
  o.prefill_chunk = chunk;
  o.max_batch = max_batch;
  return o;
}

// One request alone, whole prompt in one step, one rank.
const GenerateResult& alone(const std::string& prompt, int64_t n) {
  static std::map<std::pair<std::string, int64_t>, GenerateResult> cache;
  auto key = std::make_pair(prompt, n);
  if (!cache.count(key)) {
    Engine e({test::test_model({}), 1, 512, 1, 0});
    cache[key] = e.generate(request(prompt, n));
  }
  return cache[key];
}

}  // namespace

TEST(Batching, ChunkedPrefillGivesTheUnchunkedLogits) {
  const std::string prompt = kPrompts[1] + kPrompts[2] + kPrompts[4];  // ~80 tokens
  const GenerateResult& ref = alone(prompt, 8);
  ASSERT_GT(ref.prompt_ids.size(), 64u);
  for (auto [pp, tp] : {std::pair{1, 1}, std::pair{3, 1}, std::pair{1, 2}}) {
    for (int64_t chunk : {int64_t(1), int64_t(7), int64_t(64), int64_t(0)}) {
      SCOPED_TRACE(fmt::format("pp {} tp {} chunk {}", pp, tp, chunk));
      Cluster c(options(pp, tp, chunk));
      GenerateResult r = c.generate(request(prompt, 8));
      EXPECT_LT(test::max_relative_error(r.first_logits, ref.first_logits), 1e-4);
      EXPECT_EQ(r.output_ids, ref.output_ids);
      // No step ran more than one chunk of the prompt.
      if (chunk > 0) {
        EXPECT_LE(c.last_run().max_step_tokens, chunk);
      }
    }
  }
}

TEST(Batching, EightPromptsTogetherGiveEachItsOwnTokens) {
  for (auto [pp, tp] : {std::pair{1, 1}, std::pair{2, 1}, std::pair{1, 2}}) {
    SCOPED_TRACE(fmt::format("pp {} tp {}", pp, tp));
    Cluster c(options(pp, tp, 16, 8));
    std::vector<GenerateRequest> reqs;
    for (const auto& p : kPrompts) reqs.push_back(request(p, 12));
    auto results = c.run(reqs);
    ASSERT_EQ(results.size(), kPrompts.size());
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      EXPECT_EQ(results[i].error, "");
      EXPECT_EQ(results[i].output_ids, alone(kPrompts[i], 12).output_ids) << "prompt " << i;
      EXPECT_LT(test::max_relative_error(results[i].first_logits, alone(kPrompts[i], 12).first_logits), 1e-4);
    }
    // They really ran together: fewer steps than running them one after another.
    int64_t alone_steps = 0;
    for (const auto& r : results) alone_steps += int64_t((r.prompt_ids.size() + 15) / 16) + 11;
    EXPECT_LT(c.last_run().steps, alone_steps / 2);
  }
}

TEST(Batching, RequestsArrivingWhileOthersDecodeJoinTheBatch) {
  Cluster c(options(2, 1, 8, 4));
  std::vector<GenerateRequest> reqs;
  for (size_t i = 0; i < kPrompts.size(); ++i) reqs.push_back(request(kPrompts[i], 10, int64_t(i) * 5));
  std::vector<size_t> order;
  auto results = c.run(reqs, [&](size_t i, int32_t, const std::string&) { order.push_back(i); });
  for (size_t i = 0; i < kPrompts.size(); ++i)
    EXPECT_EQ(results[i].output_ids, alone(kPrompts[i], 10).output_ids) << "prompt " << i;
  // Streams interleave: some request produced a token after a later-arriving one started.
  size_t first_of_last = std::find(order.begin(), order.end(), kPrompts.size() - 1) - order.begin();
  EXPECT_LT(first_of_last, order.size() - 10) << "the last request only started when the others were done";
}

TEST(Batching, FullKvCacheQueuesRequestsAndRefusesOnesThatCanNeverFit) {
  ClusterOptions o = options(1, 1, 32, 4);
  // Room for 8 blocks of 16 positions = 128 positions: two requests of ~60 at a time.
  const int64_t block_bytes = 2 * 4 * 16 * 2 * 64 * 4;  // K+V, 4 layers, 16 positions, 2 kv heads, dim 64, f32
  o.kv_memory = 8 * block_bytes;
  Cluster c(o);
  EXPECT_EQ(c.rank0().kv_blocks(), 8);
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < 4; ++i) reqs.push_back(request(kPrompts[static_cast<size_t>(i)], 40));
  reqs.push_back(request(std::string(2000, 'x'), 8));  // needs far more than 8 blocks
  auto results = c.run(reqs);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(results[size_t(i)].error, "");
    EXPECT_EQ(results[size_t(i)].output_ids, alone(kPrompts[size_t(i)], 40).output_ids);
  }
  EXPECT_NE(results[4].error.find("raise --kv-memory"), std::string::npos) << results[4].error;
  // Someone had to wait for blocks.
  double waited = 0;
  for (int i = 0; i < 4; ++i) waited = std::max(waited, results[size_t(i)].queue_s);
  EXPECT_GT(waited, 0.0);
}
