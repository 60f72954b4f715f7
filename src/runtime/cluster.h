// A model split over several ranks, seen from rank 0: start (or join) the ranks, generate, and
// shut everything down. Three ways to get the ranks:
// - local (default): this process forks the other ranks on this host (a GPU run's are started by
//   exec, runtime/local_rank.h) and links them by shm or tcp;
// - mpirun: every process of `mpirun -np N shardlm generate --backend mpi` builds a Cluster;
//   rank 0 drives and the others serve until rank 0 is done;
// - hosts: `shardlm worker` processes on other machines are given their part over tcp.
#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/group.h"
#include "runtime/control_link.h"
#include "runtime/emulated_network.h"
#include "runtime/rank.h"
#include "runtime/request.h"
#include "runtime/scheduler.h"

namespace shardlm {

struct ClusterOptions {
  std::string model_path;
  int pp = 1, tp = 1;
  std::vector<double> stage_weights;
  std::string backend = "shm";    // shm, tcp, mpi
  std::string topology = "ring";  // tcp
  int threads_per_rank = 0;       // 0: this host's cores / ranks (at least 1)
  int64_t context = 0;            // positions per sequence; 0: min(max_position_embeddings, 4096)
  int max_batch = 1;              // sequences decoding together
  int64_t prefill_chunk = 256;    // prompt tokens per step (0: whole prompts)
  int64_t kv_memory = 0;          // KV cache bytes per rank; 0: max_batch x context positions
  std::string device = "cpu";     // cpu or cuda (rank r on GPU r % GPUs of its host)
  std::chrono::milliseconds timeout = comm::kDefaultTimeout;
  std::string hosts_file;         // tcp over `shardlm worker`s: JSON list of "host:port", rank order
  std::string secret;             // cluster secret for tcp (generated for local runs when empty)
  // A tokenizer already loaded from this model (a server running many sessions parses it once);
  // null: rank 0 loads it.
  std::shared_ptr<const Tokenizer> tokenizer;
  // Local ranks in the namespaces of an emulated network (tcp only), rank r in network->netns(r).
  const EmulatedNetwork* network = nullptr;
};

class Cluster {
 public:
  explicit Cluster(const ClusterOptions& options);
  ~Cluster();  // shuts the ranks down and reaps every process it started; never throws
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // False on an mpirun rank other than 0: it has served its part and has nothing left to do.
  bool is_driver() const { return driver_; }

  GenerateResult generate(const GenerateRequest& request,
                          const std::function<void(int32_t, const std::string&)>& on_token = {});
  // Many requests at once: they share steps up to max_batch at a time (continuous batching).
  std::vector<GenerateResult> run(const std::vector<GenerateRequest>& requests, const TokenCallback& on_token = {});
  const SchedulerStats& last_run() const { return scheduler_->stats(); }
  // Per-rank load_s, peak RSS, comm share... (rank order).
  nlohmann::json rank_reports();

  const Plan& plan() const { return rank0_->plan(); }
  const Rank& rank0() const { return *rank0_; }
  const ModelConfig& config() const { return rank0_->config(); }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  int64_t context() const { return context_; }
  double load_s() const { return load_s_; }
  const std::string& backend_name() const { return backend_name_; }

 private:
  void start(const ClusterOptions& o);
  void start_local(const ClusterOptions& o, RankOptions rank_options);
  void start_remote(const ClusterOptions& o, const RankOptions& rank_options);
  void shutdown_quietly();
  // After a communication error: the run marked failed, and `e` thrown again, naming the local
  // ranks that have ended.
  [[noreturn]] void lost_ranks(const comm::CommError& e);
  // "rank R was killed by signal S; ..." for the local ranks that have ended (empty: none).
  std::string exited_ranks() const;

  bool driver_ = true;
  std::vector<int> children_;  // pids of local ranks
  std::vector<ControlLink> workers_;  // control links to remote ranks, kept for the whole run
  std::unique_ptr<comm::Group> world_;
  std::unique_ptr<Rank> rank0_;
  std::unique_ptr<Scheduler> scheduler_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  int listen_fd_ = -1;  // rank 0's tcp listening socket: the group borrows it, we close it
  std::unique_ptr<EnterNetns> netns_;  // rank 0's namespace on an emulated network, for the run
  int64_t context_ = 0;
  double load_s_ = 0;
  std::string backend_name_;
  bool healthy_ = true;
};

// Threads per rank when the user gives none: the cores of this host shared by its ranks.
int default_threads_per_rank(int ranks_on_host);

}  // namespace shardlm
