#include "runtime/worker.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "comm/connect.h"
#include "comm/tcp/socket_io.h"
#include "core/error.h"
#include "core/log.h"
#include "runtime/cluster.h"
#include "runtime/control_link.h"
#include "runtime/rank.h"
#include "runtime/rank_job.h"

namespace shardlm {

namespace tcp = comm::tcp;

namespace {

// Runs one job to its end in this (child) process.
void run_job(ControlLink& link, const WorkerOptions& o, const std::string& listen_host) {
  nlohmann::json job = link.recv_json(o.timeout);
  RankOptions ro = rank_options_from_job(job, link.peer());
  const int rank = job_field<int>(job, "rank", link.peer()), world = ro.plan.pp * ro.plan.tp;
  // 0: rank 0 leaves the count to this machine (its --threads, else all its cores).
  if (ro.threads <= 0) ro.threads = o.threads > 0 ? o.threads : default_threads_per_rank(1);
  if (rank <= 0 || rank >= world) throw comm::CommError(fmt::format("job from {}: rank {} of {}", link.peer(), rank, world));

  int port = 0;
  int group_fd = tcp::listen_socket(listen_host, 0, &port);
  link.send_json({{"port", port}}, o.timeout);
  nlohmann::json go = link.recv_json(o.timeout);
  comm::GroupSpec spec;
  spec.backend = "tcp";
  spec.topology = job_field<std::string>(job, "topology", link.peer());
  spec.rank = rank;
  spec.size = world;
  spec.endpoints = job_field<std::vector<std::string>>(go, "endpoints", link.peer());
  spec.listen_fd = group_fd;
  spec.secret = o.secret;
  spec.timeout = std::chrono::milliseconds(job_field<int64_t>(job, "timeout_ms", link.peer()));
  if (int(spec.endpoints.size()) != world)
    throw comm::CommError(fmt::format("job from {}: {} endpoints for {} ranks", link.peer(), spec.endpoints.size(), world));
  log_info("worker: rank {} of {} ({} pp {} tp {})", rank, world, ro.model_path, ro.plan.pp, ro.plan.tp);
  auto group = comm::connect(spec);
  ro.timeout = spec.timeout;
  Rank r(ro, *group);
  r.serve();
}

}  // namespace

void run_worker(const WorkerOptions& o, const std::atomic<bool>* stop) {
  SHARDLM_CHECK(!o.secret.empty(), "worker: a cluster secret is required (--secret)");
  tcp::Endpoint at = tcp::parse_endpoint(o.listen, "--listen");
  int port = 0;
  int fd = tcp::listen_socket(at.host, at.port, &port);
  log_info("worker: listening on {}:{}", at.host, port);
  int jobs = 0;
  while (o.max_jobs < 0 || jobs < o.max_jobs) {
    if (stop && stop->load()) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    int cfd = ::accept(fd, nullptr, nullptr);
    if (cfd < 0) continue;
    tcp::set_nonblocking(cfd);
    ControlLink link(cfd, tcp::remote_address(cfd));
    std::string why;
    if (!link.accept_handshake(o.secret, std::chrono::milliseconds(5000), &why)) {
      log_info("worker: refused {}: {}", link.peer(), why);
      continue;
    }
    // Each job runs in a child: whatever it leaves behind (a crash, memory, maps) ends with it.
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = ::fork();
    if (pid == 0) {
      ::close(fd);
      int code = 0;
      try {
        run_job(link, o, at.host);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "shardlm: error: worker job from %s: %s\n", link.peer().c_str(), e.what());
        code = 1;
      }
      std::fflush(stderr);
      ::_exit(code);
    }
    ++jobs;
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    log_info("worker: job from {} ended ({})", link.peer(),
             WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "ok" : "failed");
  }
  ::close(fd);
}

}  // namespace shardlm
