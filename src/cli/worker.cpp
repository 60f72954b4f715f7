#include <csignal>

#include "cli/commands.h"
#include "runtime/worker.h"

namespace shardlm::cli {

namespace {
std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop.store(true); }
}  // namespace

void add_worker(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "worker", "Serve ranks of multi-machine runs: rank 0 (`generate --hosts hosts.json --backend tcp`) connects here");
  auto o = std::make_shared<WorkerOptions>();
  auto timeout_s = std::make_shared<double>(60);
  cmd->add_option("--listen", o->listen, "Address to listen on, host:port")->capture_default_str();
  cmd->add_option("--secret", o->secret, "Cluster secret; connections that cannot prove it are refused")->required();
  cmd->add_option("-t,--threads", o->threads, "Threads for the rank (0: all cores)")->capture_default_str();
  cmd->add_option("--jobs", o->max_jobs, "Exit after this many jobs (-1: serve until interrupted)")->capture_default_str();
  cmd->add_option("--comm-timeout", *timeout_s, "Seconds to wait for a peer before failing a job")->capture_default_str();
  cmd->callback([=] {
    o->timeout = std::chrono::milliseconds(int64_t(*timeout_s * 1000));
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    run_worker(*o, &g_stop);
  });
}

}  // namespace shardlm::cli
