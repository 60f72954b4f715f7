// The plan's pipeline split: layers contiguous, lm_head rows poured into the light stages so every
// stage carries about the same weight bytes, vocabulary ranges contiguous over the ranks.
#include <gtest/gtest.h>

#include <algorithm>

#include "parallel/plan.h"

using namespace shardlm;

namespace {

// The small preset's shape: the lm_head (151680 x 1024) outweighs all 8 layers together.
ModelConfig small_llama() {
  ModelConfig c;
  c.vocab_size = 151680, c.hidden_size = 1024, c.intermediate_size = 3072, c.num_layers = 8;
  c.num_heads = 16, c.num_kv_heads = 4, c.head_dim = 64;
  return c;
}

double layer_params(const ModelConfig& c) {
  return double(c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads) + 3 * c.hidden_size * c.intermediate_size);
}

// Weight parameters of each stage: its layers plus its lm_head rows.
std::vector<double> stage_params(const Plan& p, const ModelConfig& c) {
  std::vector<double> out;
  for (const StageRange& s : p.stages)
    out.push_back(double(s.layer_end - s.layer_begin) * layer_params(c) + double(s.vocab_end - s.vocab_begin) * double(c.hidden_size));
  return out;
}

void expect_covering(const Plan& p, const ModelConfig& c) {
  int64_t layer = 0, vocab = 0;
  for (const StageRange& s : p.stages) {
    EXPECT_EQ(s.layer_begin, layer);
    EXPECT_GT(s.layer_end, s.layer_begin);
    EXPECT_EQ(s.vocab_begin, vocab);
    EXPECT_GE(s.vocab_end, s.vocab_begin);
    layer = s.layer_end, vocab = s.vocab_end;
  }
  EXPECT_EQ(layer, c.num_layers);
  EXPECT_EQ(vocab, c.vocab_size);
  // Every rank's rows, in rank order, tile the vocabulary.
  int64_t next = 0;
  for (int r = 0; r < p.world_size(); ++r) {
    const VocabRange v = p.vocab_of(r);
    EXPECT_EQ(v.begin, next) << "rank " << r;
    EXPECT_GE(v.end, v.begin);
    next = v.end;
  }
  EXPECT_EQ(next, c.vocab_size);
}

}  // namespace

TEST(Plan, PipelineStagesCarryEqualWeightsWhenTheHeadOutweighsTheLayers) {
  const ModelConfig c = small_llama();
  for (int pp : {2, 3, 4}) {
    SCOPED_TRACE(pp);
    const Plan p = make_plan(c, {pp, 1, {}});
    expect_covering(p, c);
    const std::vector<double> w = stage_params(p, c);
    const auto [lo, hi] = std::minmax_element(w.begin(), w.end());
    EXPECT_LT(*hi / *lo, 1.001);  // the head is divisible: equal to a row
  }
  // PP2: four layers each, half the head each.
  const Plan p2 = make_plan(c, {2, 1, {}});
  EXPECT_EQ(p2.stages[0].layer_end, 4);
  EXPECT_EQ(p2.stages[0].vocab_end, c.vocab_size / 2);
}

TEST(Plan, StageWeightsAndTensorParallelRanksSplitTheHead) {
  const ModelConfig c = small_llama();
  const Plan p = make_plan(c, {2, 2, {1.0, 3.0}});
  expect_covering(p, c);
  const std::vector<double> w = stage_params(p, c);
  EXPECT_NEAR(w[1] / w[0], 3.0, 0.3);  // layers are whole, so near the 1:3 asked for
  // Within a stage the rows split evenly over its TP ranks.
  const VocabRange a = p.vocab_of(2), b = p.vocab_of(3);
  EXPECT_LE(std::abs((a.end - a.begin) - (b.end - b.begin)), 1);
}

TEST(Plan, LayersHeavierThanTheHeadLeaveSomeStagesWithoutHeadRows) {
  ModelConfig c = small_llama();
  c.vocab_size = 1000;  // a head smaller than a layer
  const Plan p = make_plan(c, {3, 1, {}});  // 3, 3, 2 layers (or 2, 3, 3): the light stage takes it all
  expect_covering(p, c);
  int stages_with_rows = 0;
  for (const StageRange& s : p.stages) stages_with_rows += s.vocab_end > s.vocab_begin;
  EXPECT_EQ(stages_with_rows, 1);
  const Plan single = make_plan(c, {1, 1, {}});
  EXPECT_EQ(single.vocab_of(0).begin, 0);
  EXPECT_EQ(single.vocab_of(0).end, c.vocab_size);
}
