// One rank of a run: the slice of the model the plan gives it, its KV cache, and the step every
// rank runs. Rank 0 drives: it tells the others what each step holds and collects the sampled
// tokens; every other rank serves commands until told to shut down. A run of one rank is the
// same code with a group of one.
//
// A step on the rank at (stage s, tensor-parallel index t), for a batch of sequence segments:
//   stage 0 embeds the tokens; stage s > 0 receives the activations from (s-1, t);
//   its layers run, all-reducing partial sums over the stage's TP group;
//   stage s < last sends the activations to (s+1, t).
// The lm_head is split over every rank (the plan's vocabulary ranges), so the pipeline stays
// balanced when the head outweighs many layers. The last stage sends the final activations of
// the rows that sample to (s, t) for every other stage s holding head rows, and computes its own
// rows at once; the other stages compute theirs when rank 0 asks (a Head command, sent when it
// collects that step), so their layers for the next micro-batch are not held up. Every rank
// sends its logits to rank 0, which samples: all of them, or only each row's best (value, id)
// when every sampled sequence is greedy and no logits are wanted.
// Rank 0 may issue the next step before the last one's tokens are back: under PP the steps of
// different micro-batches then occupy different stages at once.
#pragma once
#include <chrono>
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
  std::string device = "cpu";  // cpu, or cuda (each rank on GPU rank % GPUs)
  std::chrono::milliseconds timeout = comm::kDefaultTimeout;  // the cluster's: NCCL's waits too
};

// True once this process has put a rank on a GPU (always false in a build without CUDA).
bool cuda_used_in_this_process();

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
  // This rank's lm_head rows for `rows` rows of final activations x: kept (rank 0) or sent to rank 0.
  void head_rows(const float* x, std::span<const int64_t> rows, bool greedy);
  void deferred_head();  // a stage before the last: the oldest pending step's head rows
  // A step samples greedily when no logits are wanted and every sampled sequence is greedy: each
  // rank then sends only its rows' best logit. Rank 0 and the head ranks decide it the same way.
  bool greedy_step(std::span<const WireSegment> segments, bool want_logits) const;
  void count_step(double seconds);  // into step_s_ and longest_step_s_
  template <class F>
  void timed(F&& f);  // runs a communication call, adding its wall time to comm_s_
  double comm_s() const;  // host comm plus the device all-reduces' GPU time

  RankOptions options_;
  StepLimits limits_;
  comm::Group& world_;
  std::unique_ptr<comm::Group> tp_group_;
  std::unique_ptr<ModelFiles> files_;
  Plan plan_;
  int stage_ = 0, tp_rank_ = 0, last_stage_ = 0;
  ThreadPool pool_;
  ModelWeights weights_;
  std::unique_ptr<comm::Group> pipeline_group_;         // GPU pipelines: the ranks of this TP index, by stage
  std::unique_ptr<DeviceGroup> device_large_sums_;      // NCCL for the peer group's sums over 4 MB: outlives it
  std::unique_ptr<DeviceGroup> device_all_reduce_;      // peer memory or NCCL for GPU tensor parallelism, else null
  std::string tp_link_;                                 // which: "peer", "peer+nccl" or "nccl"
  std::unique_ptr<DeviceGroup> device_pipeline_;        // NCCL for GPU pipeline hand-offs, else null
  // After the groups, so destroyed before them: NCCL does not let a communicator go while CUDA
  // graphs that captured its transfers still exist (ncclCommDestroy waits for them).
  std::unique_ptr<ForwardPass> transformer_;
  std::unique_ptr<KvCache> cache_;
  int64_t kv_blocks_ = 0;
  std::vector<Sampler> samplers_;  // per slot, on rank 0
  std::vector<uint8_t> greedy_;    // per slot: temperature 0 (every rank knows, to pick the reply)
  std::vector<float> x_, final_rows_, logits_;
  std::vector<Segment> segments_;
  std::vector<int64_t> rows_;
  struct PendingHead {
    int64_t rows = 0;
    bool greedy = false;
  };
  std::deque<PendingHead> pending_heads_;      // stages before the last: steps whose head rows wait
  std::deque<std::vector<float>> own_slices_;  // rank 0: its own head rows of steps in flight
  struct Expected {
    std::vector<int32_t> slots;  // of the segments that sample, in order
    bool want_logits = false, greedy = false;
  };
  std::deque<Expected> expected_;  // rank 0: steps in flight
  double load_s_ = 0, step_s_ = 0, comm_s_ = 0, longest_step_s_ = 0;
  int64_t steps_ = 0, tokens_ = 0;
};

}  // namespace shardlm
