// One process running a whole model: the reference every split is checked against. It is the
// same rank and scheduler code as a Cluster, with a group of one rank and no other process.
#pragma once
#include <string>

#include "runtime/cluster.h"

namespace shardlm {

struct EngineOptions {
  std::string model_path;  // Hugging Face folder or .gguf file
  int threads = 0;         // 0: all cores
  int64_t context = 0;     // KV cache positions per sequence; 0: min(max_position_embeddings, 4096)
  int max_batch = 1;
  int64_t prefill_chunk = 256;
  int64_t kv_memory = 0;
  std::string device = "cpu";  // cpu or cuda
};

class Engine {
 public:
  explicit Engine(const EngineOptions& o) : cluster_(to_cluster(o)) {}

  GenerateResult generate(const GenerateRequest& request,
                          const std::function<void(int32_t, const std::string&)>& on_token = {}) {
    return cluster_.generate(request, on_token);
  }
  std::vector<GenerateResult> run(const std::vector<GenerateRequest>& requests, const TokenCallback& on_token = {}) {
    return cluster_.run(requests, on_token);
  }
  const ModelConfig& config() const { return cluster_.config(); }
  const Tokenizer& tokenizer() const { return cluster_.tokenizer(); }
  const ModelFiles& files() const { return cluster_.rank0().files(); }
  int threads() const { return cluster_.rank0().threads(); }
  double load_s() const { return cluster_.load_s(); }
  int64_t context() const { return cluster_.context(); }
  int64_t weight_bytes() const { return cluster_.rank0().weights().bytes; }
  const SchedulerStats& last_run() const { return cluster_.last_run(); }
  nlohmann::json report() { return cluster_.rank_reports()[0]; }

 private:
  static ClusterOptions to_cluster(const EngineOptions& o) {
    ClusterOptions c;
    c.model_path = o.model_path;
    c.threads_per_rank = o.threads;
    c.context = o.context;
    c.max_batch = o.max_batch;
    c.prefill_chunk = o.prefill_chunk;
    c.kv_memory = o.kv_memory;
    c.device = o.device;
    return c;
  }
  Cluster cluster_;
};

}  // namespace shardlm
