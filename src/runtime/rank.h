// One rank of a run: the slice of the model the plan gives it, its KV cache, and the step every
// rank runs. Rank 0 drives: it tells the others what each step holds and collects the sampled
// tokens; every other rank serves commands until told to shut down. A run of one rank is the
// same code with a group of one.
//
// A step on the rank at (stage s, tensor-parallel index t), for a batch of sequence segments:
//   stage 0 embeds the tokens; stage s > 0 receives the activations from (s-1, t);
//   its layers run, all-reducing partial sums over the stage's TP group;
//   stage s < last sends the activations to (s+1, t); the last stage computes its lm_head rows
//   for the segments that sample (t > 0 sends them to t = 0), and (last, 0) samples one token per
//   such segment and sends them to rank 0.
// Rank 0 may issue the next step before the last one's tokens are back: under PP the steps of
// different micro-batches then occupy different stages at once.
#pragma once
#include <deque>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "comm/group.h"
#include "core/thread_pool.h"
#include "formats/model_files.h"
#include "model/transformer.h"
#include "parallel/plan.h"
#include "runtime/sampler.h"
#include "runtime/step_protocol.h"

namespace shardlm {

struct RankOptions {
  std::string model_path;
  PlanOptions plan;
  int threads = 1;
  int64_t max_context = 4096;  // positions of one sequence
  int max_sequences = 1;       // sequences live at once (cache slots)
  int64_t kv_memory = 0;       // bytes of KV cache per rank; 0: max_sequences x max_context positions
};

class Rank {
 public:
  // Loads this rank's slice (world.rank() picks it), forms its tensor-parallel group, sizes its
  // KV cache and agrees with the other ranks on the smallest one.
  Rank(const RankOptions& options, comm::Group& world);

  const Plan& plan() const { return plan_; }
  const ModelConfig& config() const { return files_->config(); }
  const ModelFiles& files() const { return *files_; }
  const ModelWeights& weights() const { return weights_; }
  int rank() const { return world_.rank(); }
  int threads() const { return pool_.size(); }
  // KV blocks every rank can hold (the smallest of them), and their size in positions.
  int64_t kv_blocks() const { return kv_blocks_; }
  int64_t kv_block_size() const { return cache_->block_size(); }

  // Rank 0: drive the others.
  void begin_sequence(int slot, const SamplerOptions& sampler);
  void end_sequence(int slot);
  void issue(std::span<const WireSegment> segments, const int32_t* ids, bool want_logits);
  struct StepResult {
    std::vector<int32_t> tokens;  // one per segment that samples, in segment order
    std::vector<float> logits;    // [tokens][vocab] when asked for
  };
  // The result of the oldest issued step that has not been collected (waits for it).
  StepResult collect();
  size_t in_flight() const { return expected_.size(); }
  nlohmann::json collect_reports();  // every rank's report, rank order
  void shutdown();

  // Other ranks: serve commands until Shutdown; returns normally then.
  void serve();

  nlohmann::json report() const;

 private:
  void broadcast(const StepCommand& c, std::span<const WireSegment> segments, const int32_t* ids);
  void begin(const StepCommand& c);
  void run_step(std::span<const WireSegment> segments, const int32_t* ids, bool want_logits);
  template <class F>
  void timed(F&& f);  // runs a communication call, adding its wall time to comm_s_

  RankOptions options_;
  StepLimits limits_;
  comm::Group& world_;
  std::unique_ptr<comm::Group> tp_group_;
  std::unique_ptr<ModelFiles> files_;
  Plan plan_;
  int stage_ = 0, tp_rank_ = 0, sampler_rank_ = 0;
  ThreadPool pool_;
  ModelWeights weights_;
  std::unique_ptr<Transformer> transformer_;
  std::unique_ptr<KvCache> cache_;
  int64_t kv_blocks_ = 0;
  std::vector<Sampler> samplers_;  // per slot, on the sampling rank
  std::vector<float> x_, local_logits_, logits_, gathered_;
  std::vector<Segment> segments_;
  std::vector<int64_t> rows_;
  std::deque<StepResult> local_results_;  // when this rank samples itself
  std::deque<std::pair<int, bool>> expected_;  // rank 0: (tokens, with logits) of steps in flight
  double load_s_ = 0, step_s_ = 0, comm_s_ = 0, longest_step_s_ = 0;
  int64_t steps_ = 0, tokens_ = 0;
};

}  // namespace shardlm
