#include "runtime/cluster.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <random>
#include <thread>

#include "comm/connect.h"
#include "comm/shm/shm_group.h"
#include "comm/tcp/socket_io.h"
#include "comm/tcp/tcp_group.h"
#include "formats/json_error.h"
#include <fstream>
#include "core/log.h"
#include "core/process_stats.h"
#include "comm/self_group.h"
#include "runtime/local_rank.h"
#include "runtime/plan_memory.h"
#include "runtime/rank_job.h"

namespace shardlm {

namespace {

std::string random_secret() {
  std::random_device rd;
  std::string s;
  for (int i = 0; i < 4; ++i) s += fmt::format("{:08x}", rd());
  return s;
}

// Runs one forked rank to completion; never returns.
[[noreturn]] void run_child_rank(const comm::GroupSpec& spec, const RankOptions& options) {
  int code = 0;
  try {
    auto world = comm::connect(spec);
    Rank rank(options, *world);
    rank.serve();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shardlm: error: rank %d: %s\n", spec.rank, e.what());
    code = 1;
  }
  std::fflush(stderr);
  ::_exit(code);
}

}  // namespace

int default_threads_per_rank(int ranks_on_host) {
  return std::max(1, ThreadPool::default_threads() / std::max(1, ranks_on_host));
}

Cluster::Cluster(const ClusterOptions& o) {
  try {
    start(o);
  } catch (const comm::CommError&) {
    healthy_ = false;
    shutdown_quietly();
    throw;
  } catch (...) {
    shutdown_quietly();
    throw;
  }
}

void Cluster::start(const ClusterOptions& o) {
  Stopwatch clock;
  comm::check_backend(o.backend, o.topology);
  backend_name_ = o.backend == "tcp" ? "tcp-" + o.topology : o.backend;
  const int world = o.pp * o.tp;
  SHARDLM_CHECK(o.pp >= 1 && o.tp >= 1, "--pp and --tp must be at least 1");
  RankOptions ro;
  ro.model_path = o.model_path;
  ro.plan.pp = o.pp;
  ro.plan.tp = o.tp;
  ro.plan.stage_weights = o.stage_weights;
  // Every rank needs the context limit before the model is open; read it from the files here.
  {
    auto files = open_model_files(o.model_path);
    context_ = context_or_default(o.context, files->config());
    const Plan plan = make_plan(files->config(), ro.plan);  // refuse an impossible split before starting any process
    // CPU ranks started here share this host's memory: their KV caches together must fit (each
    // rank checks only its own, and they all check before any allocates).
    if (o.device == "cpu" && o.backend != "mpi" && o.hosts_file.empty() && world > 1) {
      int64_t caches = 0;
      for (const RankMemory& m : estimate_memory(*files, plan, context_, o.max_batch, o.kv_memory)) caches += m.kv_cache_bytes;
      const int64_t available = available_memory_bytes();
      SHARDLM_CHECK(available < 0 || caches <= available,
                    "the {} ranks' KV caches need {} together but the host has {} available; {}", world, gib(caches),
                    gib(available), kv_cache_remedy(o.kv_memory));
    }
  }
  ro.max_context = context_;
  ro.max_sequences = o.max_batch;
  ro.kv_memory = o.kv_memory;
  ro.device = o.device;
  ro.timeout = o.timeout;

  if (o.backend == "mpi") {
    comm::GroupSpec spec;
    spec.backend = "mpi";
    spec.timeout = o.timeout;
    world_ = comm::connect(spec);
    SHARDLM_CHECK(world_->size() == world, "mpirun started {} processes but --pp {} x --tp {} needs {}", world_->size(),
                  o.pp, o.tp, world);
    ro.threads = o.threads_per_rank > 0 ? o.threads_per_rank : 1;
    if (world_->rank() != 0) {
      driver_ = false;
      Rank rank(ro, *world_);
      rank.serve();
      return;
    }
  } else if (world == 1) {
    ro.threads = o.threads_per_rank > 0 ? o.threads_per_rank : default_threads_per_rank(1);
    world_ = std::make_unique<comm::SelfGroup>();
  } else if (!o.hosts_file.empty()) {
    SHARDLM_CHECK(o.backend == "tcp", "--hosts runs ranks on other machines over tcp; add --backend tcp");
    ro.threads = o.threads_per_rank > 0 ? o.threads_per_rank : default_threads_per_rank(1);
    start_remote(o, ro);
  } else {
    ro.threads = o.threads_per_rank > 0 ? o.threads_per_rank : default_threads_per_rank(world);
    start_local(o, ro);
  }
  rank0_ = std::make_unique<Rank>(ro, *world_);  // returns when every rank has loaded
  tokenizer_ = o.tokenizer ? o.tokenizer : std::make_shared<const Tokenizer>(rank0_->files().tokenizer());
  scheduler_ = std::make_unique<Scheduler>(*rank0_, *tokenizer_,
                                           SchedulerOptions{o.max_batch, o.prefill_chunk, context_, o.pp});
  load_s_ = clock.seconds();  // until the first request can run
  if (world > 1) {
    for (const auto& line : describe_plan(rank0_->plan())) log_info("{}", line);
    log_info("{} ranks over {} ready in {:.2f} s", world, backend_name_, load_s_);
  } else {
    log_info("loaded {}: {} layers, hidden {}, {:.2f} GB of weights in {:.2f} s ({} threads, context {})",
             rank0_->files().description(), config().num_layers, config().hidden_size, rank0_->weights().bytes / 1e9,
             load_s_, rank0_->threads(), context_);
  }
}

void Cluster::start_local(const ClusterOptions& o, RankOptions ro) {
  const int world = o.pp * o.tp;
  // A process forked from one that has used CUDA cannot use it (cudaSetDevice fails with
  // "initialization error"), and rank 0 runs in this process: GPU ranks are started by exec where
  // the shardlm executable is known (local_rank.h). Without it a second GPU cluster here would
  // fail in its children: say so before forking.
  const bool exec_ranks = o.device == "cuda" && !rank_executable().empty();
  SHARDLM_CHECK(o.device != "cuda" || exec_ranks || !cuda_used_in_this_process(),
                "--device cuda: this process has already run ranks on the GPU, and ranks forked from it cannot use "
                "it; start one multi-rank GPU run per process");
  comm::LocalGroup group =
      comm::prepare_local_group(o.backend, o.topology, world, o.secret.empty() ? random_secret() : o.secret, o.timeout);
  if (o.network) {
    // Each rank binds in its own namespace, at its address there.
    SHARDLM_CHECK(o.backend == "tcp", "an emulated network needs --backend tcp (shared memory does not cross it)");
    SHARDLM_CHECK(o.network->size() >= world, "the emulated network has {} ranks, the run needs {}", o.network->size(), world);
    group.close_except(-1);
    group.listen_fds.clear();
    group.spec.endpoints.clear();
    for (int r = 0; r < world; ++r) group.spec.endpoints.push_back(o.network->address(r) + ":7700");
  }
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = ::getpid();
  for (int r = 1; r < world; ++r) {
    pid_t pid = ::fork();
    if (pid < 0) {
      group.close_except(-1);
      shutdown_quietly();
      fail("cannot start rank {}: fork failed", r);
    }
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // a rank never outlives the run that started it
      if (::getppid() != parent) ::_exit(1);
      group.close_except(r);
      std::optional<EnterNetns> inside;
      if (o.network) {
        try {
          inside.emplace(o.network->netns(r));
        } catch (const std::exception& e) {
          std::fprintf(stderr, "shardlm: error: rank %d: %s\n", r, e.what());
          ::_exit(1);
        }
      }
      if (exec_ranks) exec_rank(group.for_rank(r), ro);  // never returns
      run_child_rank(group.for_rank(r), ro);
    }
    children_.push_back(pid);
  }
  group.close_except(0);
  if (o.network) netns_ = std::make_unique<EnterNetns>(o.network->netns(0));  // for the whole run
  comm::GroupSpec spec = group.for_rank(0);
  listen_fd_ = spec.listen_fd;
  world_ = comm::connect(spec);
}

void Cluster::start_remote(const ClusterOptions& o, const RankOptions& ro) {
  const int world = o.pp * o.tp;
  std::vector<std::string> hosts;
  {
    std::ifstream in(o.hosts_file);
    if (!in) fail("{}: cannot open", o.hosts_file);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
      hosts = j.get<std::vector<std::string>>();
    } catch (const nlohmann::json::exception& e) {
      fail("{}: expected a JSON list of \"host:port\" strings, one per rank ({})", o.hosts_file, json_error_text(e));
    }
  }
  SHARDLM_CHECK(int(hosts.size()) == world,
                "{}: lists {} hosts but --pp {} x --tp {} needs {} (entry 0 is this machine)", o.hosts_file, hosts.size(),
                o.pp, o.tp, world);
  SHARDLM_CHECK(!o.secret.empty(), "--hosts needs the cluster --secret the workers were started with");
  nlohmann::json job = rank_job(ro);
  // Threads as asked (0: each worker picks for its own machine), not as resolved for this one.
  job.update({{"threads", std::max(0, o.threads_per_rank)},
              {"topology", o.topology},
              {"timeout_ms", int64_t(o.timeout.count())}});
  std::vector<std::string> endpoints(static_cast<size_t>(world));
  for (int r = 1; r < world; ++r) {
    workers_.push_back(connect_to_worker(hosts[size_t(r)], o.secret, o.timeout));
    nlohmann::json mine = job;
    mine["rank"] = r;
    workers_.back().send_json(mine, o.timeout);
    nlohmann::json reply = workers_.back().recv_json(o.timeout);
    if (!reply.contains("port") || !reply["port"].is_number_integer())
      fail("worker {} sent a malformed reply", hosts[size_t(r)]);
    endpoints[size_t(r)] = fmt::format("{}:{}", comm::tcp::parse_endpoint(hosts[size_t(r)], "host").host,
                                       reply["port"].get<int>());
  }
  comm::tcp::Endpoint self = comm::tcp::parse_endpoint(hosts[0], "host of rank 0");
  int port = 0;
  int fd = listen_fd_ = comm::tcp::listen_socket(self.host, self.port, &port);
  endpoints[0] = fmt::format("{}:{}", self.host, port);
  for (auto& w : workers_) w.send_json({{"endpoints", endpoints}}, o.timeout);
  comm::GroupSpec spec;
  spec.backend = "tcp";
  spec.topology = o.topology;
  spec.rank = 0;
  spec.size = world;
  spec.endpoints = endpoints;
  spec.listen_fd = fd;
  spec.secret = o.secret;
  spec.timeout = o.timeout;
  world_ = comm::connect(spec);
}

GenerateResult Cluster::generate(const GenerateRequest& request,
                                 const std::function<void(int32_t, const std::string&)>& on_token) {
  std::vector<GenerateResult> r =
      run({request}, on_token ? TokenCallback([&](size_t, int32_t id, const std::string& bytes) { on_token(id, bytes); })
                              : TokenCallback());
  if (!r[0].error.empty()) throw Error(r[0].error);
  return std::move(r[0]);
}

std::vector<GenerateResult> Cluster::run(const std::vector<GenerateRequest>& requests, const TokenCallback& on_token) {
  SHARDLM_CHECK(driver_, "internal: run on a serving rank");
  SHARDLM_CHECK(healthy_, "the ranks of this run failed earlier; start a new one");
  try {
    return scheduler_->run(requests, on_token);
  } catch (const comm::CommError& e) {
    lost_ranks(e);
  }
}

nlohmann::json Cluster::rank_reports() {
  try {
    return rank0_->collect_reports();
  } catch (const comm::CommError& e) {
    lost_ranks(e);
  }
}

void Cluster::lost_ranks(const comm::CommError& e) {
  healthy_ = false;  // the ranks are out of step: don't talk to them again
  // A survivor that only saw its transfers stall (NCCL: a peer lost mid-step) cannot tell which
  // peer is gone; the local ranks' exits can.
  const std::string exited = exited_ranks();
  if (exited.empty()) throw e;
  throw comm::CommError(fmt::format("{} ({})", e.what(), exited));
}

std::string Cluster::exited_ranks() const {
  std::string out;
  for (size_t i = 0; i < children_.size(); ++i) {
    siginfo_t info{};
    // WNOWAIT: only look; shutdown_quietly() reaps it.
    if (::waitid(P_PID, id_t(children_[i]), &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0) continue;
    if (!out.empty()) out += "; ";
    out += info.si_code == CLD_EXITED ? fmt::format("rank {} exited with status {}", i + 1, info.si_status)
                                      : fmt::format("rank {} was killed by signal {}", i + 1, info.si_status);
  }
  return out;
}

void Cluster::shutdown_quietly() {
  if (driver_ && rank0_ && healthy_) {
    try {
      rank0_->shutdown();
    } catch (const std::exception&) {
    }
  }
  // Rank 0 never started (it failed while loading): its peers may be waiting for it in a
  // collective. Closing its end ends their wait at once, rather than the 10 s grace.
  const bool started = rank0_ != nullptr;
  if (driver_ && !started) world_.reset();
  // Give the ranks a moment to leave on their own, then make sure.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(healthy_ && started ? 10 : 1);
  for (pid_t pid : children_) {
    int status;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  children_.clear();
}

Cluster::~Cluster() {
  shutdown_quietly();
  rank0_.reset();
  world_.reset();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  netns_.reset();
}

}  // namespace shardlm
