// The plan: which rank holds which layers (pipeline parallel) and which slice of every layer
// (tensor parallel). Pure data computed from the config; it does no I/O and the runtime never
// decides splits itself (DESIGN.md). Any world size works: stages may hold different layer counts,
// and tensor-parallel slices need not be equal (heads, kv heads and ffn split as evenly as possible).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "formats/model_config.h"

namespace shardlm {

// What one tensor-parallel rank holds of every layer of its stage.
struct TpSlice {
  int64_t head_begin = 0, head_end = 0;        // query heads
  int64_t kv_head_begin = 0, kv_head_end = 0;  // kv heads its query heads read (shared ones replicated)
  int64_t ffn_begin = 0, ffn_end = 0;          // intermediate features (multiples of 32 at inner edges)
};

struct StageRange {
  int64_t layer_begin = 0, layer_end = 0;
  // lm_head rows (vocabulary ids) of the stage, split evenly over its TP ranks. The head is
  // divisible, so it fills up the stages the layers leave light: every stage computes logits
  // for its rows, and the pipeline is balanced by weight bytes even when the head is as large
  // as most of the layers (vocabulary parallelism).
  int64_t vocab_begin = 0, vocab_end = 0;
};

struct VocabRange {
  int64_t begin = 0, end = 0;
};

struct Plan {
  int pp = 1, tp = 1;
  std::vector<StageRange> stages;  // pp entries, contiguous, covering all layers
  std::vector<TpSlice> slices;     // tp entries; the same slicing on every stage

  int world_size() const { return pp * tp; }
  // Ranks are numbered stage-major: rank = stage * tp + tp_rank.
  int stage_of(int rank) const { return rank / tp; }
  int tp_rank_of(int rank) const { return rank % tp; }
  int rank_of(int stage, int tp_rank) const { return stage * tp + tp_rank; }
  VocabRange vocab_of(int rank) const;  // lm_head rows of one rank (may be empty)
  bool holds_head(int rank) const {
    const VocabRange v = vocab_of(rank);
    return v.end > v.begin;
  }
};

struct PlanOptions {
  int pp = 1, tp = 1;
  // Relative capacity of each stage (e.g. memory of its machine); empty = equal. Layers and
  // lm_head rows are assigned so each stage's share of the weights is proportional to its
  // capacity.
  std::vector<double> stage_weights;
};

// Throws Error when the split is impossible (more stages than layers, more TP ranks than heads...).
Plan make_plan(const ModelConfig& cfg, const PlanOptions& options);

nlohmann::json plan_to_json(const Plan& plan, const ModelConfig& cfg);
// Human-readable lines: "rank 3: stage 1 layers 8-15, heads 16-31, kv 4-7, ffn 4096-8191".
std::vector<std::string> describe_plan(const Plan& plan);

}  // namespace shardlm
