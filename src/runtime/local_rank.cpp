#include "runtime/local_rank.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/log.h"
#include "runtime/rank_job.h"

namespace shardlm {

namespace {

std::string& executable() {
  static std::string path;
  return path;
}

}  // namespace

void set_rank_executable(const std::string& path) { executable() = path; }
const std::string& rank_executable() { return executable(); }

void exec_rank(const comm::GroupSpec& spec, const RankOptions& o) {
  nlohmann::json job = rank_job(o);
  job.update({{"backend", spec.backend},
              {"topology", spec.topology},
              {"rank", spec.rank},
              {"size", spec.size},
              {"shm_name", spec.shm_name},
              {"endpoints", spec.endpoints},
              {"listen_fd", spec.listen_fd},
              {"secret", spec.secret},
              {"timeout_ms", spec.timeout.count()},
              {"log_level", int(log_level())}});
  const std::string text = job.dump();
  // A memory file holds the job (no size limit, unlike a pipe nobody reads yet); it and the
  // group's listening socket are the descriptors the new program keeps.
  const int fd = ::memfd_create("shardlm-rank-job", 0);
  bool ok = fd >= 0 && ::write(fd, text.data(), text.size()) == ssize_t(text.size()) && ::lseek(fd, 0, SEEK_SET) == 0;
  if (ok && spec.listen_fd >= 0) ok = ::fcntl(spec.listen_fd, F_SETFD, 0) == 0;
  if (ok) {
    const std::string fd_text = std::to_string(fd);
    const char* argv[] = {"shardlm", "rank", "--job-fd", fd_text.c_str(), nullptr};
    ::execv(executable().c_str(), const_cast<char* const*>(argv));
  }
  std::fprintf(stderr, "shardlm: error: rank %d: cannot start %s: %s\n", spec.rank, executable().c_str(),
               std::strerror(errno));
  std::fflush(stderr);
  ::_exit(1);
}

void serve_rank_job(int fd) {
  std::string text;
  char buffer[4096];
  for (ssize_t got; (got = ::read(fd, buffer, sizeof buffer)) != 0;) {
    SHARDLM_CHECK(got > 0 || errno == EINTR, "cannot read the rank job from descriptor {}", fd);
    if (got > 0) text.append(buffer, size_t(got));
  }
  ::close(fd);
  nlohmann::json job;
  try {
    job = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    fail("malformed rank job: not JSON (this command is started by shardlm itself)");
  }
  const std::string from = "the starting process";
  set_log_level(LogLevel(std::clamp(job_field<int>(job, "log_level", from), 0, 2)));
  comm::GroupSpec spec;
  spec.backend = job_field<std::string>(job, "backend", from);
  spec.topology = job_field<std::string>(job, "topology", from);
  spec.rank = job_field<int>(job, "rank", from);
  spec.size = job_field<int>(job, "size", from);
  spec.shm_name = job_field<std::string>(job, "shm_name", from);
  spec.endpoints = job_field<std::vector<std::string>>(job, "endpoints", from);
  spec.listen_fd = job_field<int>(job, "listen_fd", from);
  spec.secret = job_field<std::string>(job, "secret", from);
  spec.timeout = std::chrono::milliseconds(job_field<int64_t>(job, "timeout_ms", from));
  RankOptions o = rank_options_from_job(job, from);
  o.timeout = spec.timeout;
  SHARDLM_CHECK(spec.size >= 2 && spec.rank >= 1 && spec.rank < spec.size, "malformed rank job: rank {} of {}", spec.rank,
                spec.size);
  try {
    auto world = comm::connect(spec);
    Rank rank(o, *world);
    rank.serve();
  } catch (const std::exception& e) {
    fail("rank {}: {}", spec.rank, e.what());
  }
}

}  // namespace shardlm
