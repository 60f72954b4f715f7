// Runs a test body as N separate processes (fork), one per rank, the way ranks really run:
// no shared address space. The parent waits with a deadline, kills every rank on timeout, and
// reports each rank's failures.
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace shardlm::test {

struct RankOutcome {
  int rank;
  int exit_code;       // 0: passed; 1: a check failed or an exception escaped; 128+n: signal n
  bool timed_out;
  std::string output;  // what the rank wrote to stdout/stderr
};

// Forks `n` children; child r runs body(r). A body fails by throwing or by a failed gtest
// assertion (the child turns either into exit code 1 and prints the reason). Returns one outcome
// per rank; no child outlives this call.
std::vector<RankOutcome> run_ranks(int n, const std::function<void(int rank)>& body, double timeout_s = 60);

// gtest helper: all ranks exited 0 (prints every failing rank's output otherwise).
bool all_passed(const std::vector<RankOutcome>& outcomes, std::string* report);

}  // namespace shardlm::test
