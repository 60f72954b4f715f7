// `shardlm plan`'s memory a rank, counted from tensor headers before anything loads, against what
// the ranks of a running cluster report: the same weight and KV cache bytes, to the byte.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/model_files.h"
#include "runtime/cluster.h"
#include "runtime/plan_memory.h"
#include "test_models.h"
#include "test_paths.h"

using namespace shardlm;

namespace {

void expect_estimate_matches_cluster(const std::string& model, int pp, int tp, int64_t context, int batch,
                                     int64_t kv_memory = 0) {
  SCOPED_TRACE(::testing::Message() << model << " pp " << pp << " tp " << tp << " kv_memory " << kv_memory);
  auto files = open_model_files(model);
  PlanOptions po;
  po.pp = pp, po.tp = tp;
  const Plan plan = make_plan(files->config(), po);
  const std::vector<RankMemory> estimate = estimate_memory(*files, plan, context, batch, kv_memory);
  ClusterOptions o;
  o.model_path = model;
  o.pp = pp, o.tp = tp;
  o.context = context;
  o.max_batch = batch;
  o.kv_memory = kv_memory;
  o.threads_per_rank = 1;
  Cluster c(o);
  const nlohmann::json reports = c.rank_reports();
  ASSERT_EQ(reports.size(), estimate.size());
  for (const auto& r : reports) {
    const RankMemory& m = estimate.at(r["rank"].get<size_t>());
    EXPECT_EQ(r["weight_bytes"].get<int64_t>(), m.weight_bytes) << r.dump();
    EXPECT_EQ(r["kv_cache_bytes"].get<int64_t>(), m.kv_cache_bytes) << r.dump();
    EXPECT_GT(m.kv_cache_bytes, 0);
  }
}

}  // namespace

TEST(PlanMemory, EveryRanksWeightsAndKvCacheAreCountedBeforeLoading) {
  const std::string model = test::test_model({});  // tiny, f32, head not tied
  for (auto [pp, tp] : {std::pair{1, 1}, {2, 1}, {1, 2}, {2, 2}}) expect_estimate_matches_cluster(model, pp, tp, 200, 2);
  // A KV budget a rank: stages of different sizes ask for different block counts; all use the fewest.
  expect_estimate_matches_cluster(model, 2, 1, 200, 1, 3 << 20);
  // Splitting halves a rank's share: TP2 holds half the layers' matrices (the norms whole).
  auto files = open_model_files(model);
  const ModelConfig& c = files->config();
  PlanOptions one, two;
  two.tp = 2;
  const RankMemory whole = estimate_memory(*files, make_plan(c, one), 200, 2)[0];
  const RankMemory half = estimate_memory(*files, make_plan(c, two), 200, 2)[0];
  EXPECT_NEAR(double(half.weight_bytes) / double(whole.weight_bytes), 0.5, 0.01);
  EXPECT_EQ(half.kv_cache_bytes * 2, whole.kv_cache_bytes);  // half the kv heads
  // The untied embedding: a GPU's first stage copies the whole table.
  EXPECT_EQ(whole.embedding_bytes, c.vocab_size * c.hidden_size * 4);
}

TEST(PlanMemory, ATiedHeadThatHoldsTheWholeTableNeedsNoEmbeddingCopy) {
  const std::string dir = test::scratch_dir("plan-memory-tied");
  ASSERT_EQ(test::run_command(test::shardlm_binary() + " -q make-model --arch llama --preset tiny --dtype bf16 --tie yes "
                                  "--tokenizer " + test::source_dir() + "/assets/qwen3 --seed 1 --out " + dir + "/m",
                              nullptr),
            0);
  auto files = open_model_files(dir + "/m");
  const ModelConfig& c = files->config();
  ASSERT_TRUE(c.tie_word_embeddings);
  PlanOptions one, two;
  two.pp = 2;
  EXPECT_EQ(estimate_memory(*files, make_plan(c, one), 64, 1)[0].embedding_bytes, 0);
  // Split over two stages, the head's rows are shared out: the first stage copies the table.
  const std::vector<RankMemory> pp2 = estimate_memory(*files, make_plan(c, two), 64, 1);
  EXPECT_EQ(pp2[0].embedding_bytes, c.vocab_size * c.hidden_size * 2);
  EXPECT_EQ(pp2[1].embedding_bytes, 0);
  expect_estimate_matches_cluster(dir + "/m", 2, 1, 64, 1);
}

TEST(PlanMemory, UnevenSlicesQwen3AndQuantizedGgufAreCountedAlike) {
  // 4 heads over 3 ranks (1, 1, 2; a kv head held by two ranks), Qwen3's q and k norms, and a
  // q8_0 GGUF whose column slices fall on 32-weight block boundaries.
  const std::string qwen3 = test::test_model(test::parse_make_model_flags("--arch qwen3 --preset tiny --dtype bf16"));
  expect_estimate_matches_cluster(qwen3, 1, 3, 64, 1);
  expect_estimate_matches_cluster(qwen3, 2, 2, 64, 1);
  const std::string gguf = test::scratch_dir("plan-memory-gguf") + "/tiny-q8_0.gguf";
  ASSERT_EQ(test::run_command(test::shardlm_binary() + " -q convert --model " + test::test_model({}) + " --out " + gguf +
                                  " --dtype q8_0",
                              nullptr),
            0);
  expect_estimate_matches_cluster(gguf, 1, 3, 64, 1);
  expect_estimate_matches_cluster(gguf, 2, 2, 64, 2);
}

TEST(PlanMemory, AKvBudgetBelowOneBlockIsRefusedAsTheRanksRefuseIt) {
  auto files = open_model_files(test::test_model({}));
  PlanOptions two;
  two.pp = 2;
  EXPECT_THROW(estimate_memory(*files, make_plan(files->config(), two), 64, 1, 1024), Error);
}
