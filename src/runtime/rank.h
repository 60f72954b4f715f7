// One rank of a distributed run: the slice of the model the plan gives it, and the step every
// rank runs. Rank 0 drives (it sends each step's command to the others and gets the sampled
// token back); every other rank serves commands until told to shut down.
//
// A step on the rank at (stage s, tensor-parallel index t):
//   stage 0 embeds the tokens; stage s > 0 receives activations from (s-1, t);
//   its layers run, all-reducing partial sums over the stage's TP group;
//   stage s < last sends activations to (s+1, t); the last stage computes its lm_head rows,
//   (t > 0 sends them to t = 0), and (last, 0) samples and sends the token to rank 0.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
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
  int64_t max_context = 4096;  // largest cache a request may ask for
};

class Rank {
 public:
  // Loads this rank's slice (world.rank() picks it) and forms its tensor-parallel group.
  Rank(const RankOptions& options, comm::Group& world);

  const Plan& plan() const { return plan_; }
  const ModelConfig& config() const { return files_->config(); }
  const ModelFiles& files() const { return *files_; }
  int rank() const { return world_.rank(); }

  // Rank 0: drive the others.
  void begin(int64_t capacity, const SamplerOptions& sampler);
  int32_t step(const int32_t* ids, int64_t n, int64_t start, std::vector<float>* logits);
  nlohmann::json collect_reports();  // every rank's report, rank order
  void shutdown();

  // Other ranks: serve commands until Shutdown; returns normally then.
  void serve();

  nlohmann::json report() const;

 private:
  void broadcast(const StepCommand& c, const int32_t* ids);
  void execute(const StepCommand& c, const int32_t* ids);  // the step itself, on every rank
  // Runs a communication call, adding its wall time to comm_s_.
  template <class F>
  void timed(F&& f);

  RankOptions options_;
  comm::Group& world_;
  std::unique_ptr<comm::Group> tp_group_;
  std::unique_ptr<ModelFiles> files_;
  Plan plan_;
  int stage_ = 0, tp_rank_ = 0;
  ThreadPool pool_;
  ModelWeights weights_;
  std::unique_ptr<Transformer> transformer_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<Sampler> sampler_;
  std::vector<float> x_, local_logits_, logits_;
  int32_t last_token_ = 0;
  double load_s_ = 0, step_s_ = 0, comm_s_ = 0;
  int64_t steps_ = 0;
};

}  // namespace shardlm
