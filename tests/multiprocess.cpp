#include "multiprocess.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <fmt/format.h>
#include <thread>

namespace shardlm::test {

std::vector<RankOutcome> run_ranks(int n, const std::function<void(int)>& body, double timeout_s) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::vector<pid_t> pids(static_cast<size_t>(n));
  std::vector<int> pipes(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    int fds[2];
    if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
    pid_t pid = ::fork();
    if (pid == 0) {
      ::close(fds[0]);
      ::dup2(fds[1], 1);
      ::dup2(fds[1], 2);
      int code = 0;
      try {
        body(r);
        if (::testing::Test::HasFailure()) code = 1;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: exception: %s\n", r, e.what());
        code = 1;
      } catch (...) {
        std::fprintf(stderr, "rank %d: unknown exception\n", r);
        code = 1;
      }
      std::fflush(stdout);
      std::fflush(stderr);
      ::_exit(code);  // no gtest teardown, no atexit handlers of the parent
    }
    ::close(fds[1]);
    ::fcntl(fds[0], F_SETFL, O_NONBLOCK);  // drained while waiting, so a chatty rank never blocks
    pids[size_t(r)] = pid;
    pipes[size_t(r)] = fds[0];
  }

  std::vector<RankOutcome> out(static_cast<size_t>(n));
  std::vector<bool> done(static_cast<size_t>(n), false);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  int remaining = n;
  bool killed = false;
  auto drain = [&](int r) {
    char buf[4096];
    ssize_t k;
    while ((k = ::read(pipes[size_t(r)], buf, sizeof buf)) > 0) out[size_t(r)].output.append(buf, size_t(k));
  };
  while (remaining > 0) {
    for (int r = 0; r < n; ++r) drain(r);
    for (int r = 0; r < n; ++r) {
      if (done[size_t(r)]) continue;
      int status;
      pid_t got = ::waitpid(pids[size_t(r)], &status, WNOHANG);
      if (got == pids[size_t(r)]) {
        done[size_t(r)] = true;
        --remaining;
        out[size_t(r)].rank = r;
        out[size_t(r)].timed_out = killed;
        out[size_t(r)].exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
    }
    if (remaining > 0 && !killed && std::chrono::steady_clock::now() > deadline) {
      for (int r = 0; r < n; ++r)
        if (!done[size_t(r)]) ::kill(pids[size_t(r)], SIGKILL);
      killed = true;
    }
    if (remaining > 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  for (int r = 0; r < n; ++r) {
    drain(r);
    ::close(pipes[size_t(r)]);
  }
  return out;
}

bool all_passed(const std::vector<RankOutcome>& outcomes, std::string* report) {
  bool ok = true;
  for (const auto& o : outcomes) {
    if (o.exit_code == 0 && !o.timed_out) continue;
    ok = false;
    if (report)
      *report += fmt::format("rank {}: exit {}{}\n{}\n", o.rank, o.exit_code, o.timed_out ? " (killed at timeout)" : "",
                             o.output);
  }
  return ok;
}

}  // namespace shardlm::test
