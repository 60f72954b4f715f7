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

namespace shardlm {

namespace {

std::string& executable() {
  static std::string path;
  return path;
}

template <class T>
T field(const nlohmann::json& job, const char* key) {
  try {
    return job.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    fail("malformed rank job: '{}' is missing or of the wrong type", key);
  }
}

}  // namespace

void set_rank_executable(const std::string& path) { executable() = path; }
const std::string& rank_executable() { return executable(); }

void exec_rank(const comm::GroupSpec& spec, const RankOptions& o) {
  const nlohmann::json job = {
      {"backend", spec.backend},      {"topology", spec.topology},
      {"rank", spec.rank},            {"size", spec.size},
      {"shm_name", spec.shm_name},    {"endpoints", spec.endpoints},
      {"listen_fd", spec.listen_fd},  {"secret", spec.secret},
      {"timeout_ms", spec.timeout.count()},
      {"model", o.model_path},        {"pp", o.plan.pp},
      {"tp", o.plan.tp},              {"stage_weights", o.plan.stage_weights},
      {"threads", o.threads},         {"context", o.max_context},
      {"max_sequences", o.max_sequences}, {"kv_memory", o.kv_memory},
      {"device", o.device},           {"log_level", int(log_level())}};
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
  set_log_level(LogLevel(std::clamp(field<int>(job, "log_level"), 0, 2)));
  comm::GroupSpec spec;
  spec.backend = field<std::string>(job, "backend");
  spec.topology = field<std::string>(job, "topology");
  spec.rank = field<int>(job, "rank");
  spec.size = field<int>(job, "size");
  spec.shm_name = field<std::string>(job, "shm_name");
  spec.endpoints = field<std::vector<std::string>>(job, "endpoints");
  spec.listen_fd = field<int>(job, "listen_fd");
  spec.secret = field<std::string>(job, "secret");
  spec.timeout = std::chrono::milliseconds(field<int64_t>(job, "timeout_ms"));
  RankOptions o;
  o.model_path = field<std::string>(job, "model");
  o.plan.pp = field<int>(job, "pp");
  o.plan.tp = field<int>(job, "tp");
  o.plan.stage_weights = field<std::vector<double>>(job, "stage_weights");
  o.threads = field<int>(job, "threads");
  o.max_context = field<int64_t>(job, "context");
  o.max_sequences = field<int>(job, "max_sequences");
  o.kv_memory = field<int64_t>(job, "kv_memory");
  o.device = field<std::string>(job, "device");
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
