// Local ranks started by exec instead of fork: a process that has used CUDA cannot fork children
// that use it, so a GPU run's ranks are fresh shardlm processes (`shardlm rank`), and one process
// can start any number of GPU runs. The job (how to join the group, which rank, which model)
// crosses the exec in an inherited memory file (memfd), not on the command line, so the cluster
// secret never shows in the process list.
#pragma once
#include <string>

#include "comm/connect.h"
#include "runtime/rank.h"

namespace shardlm {

// The shardlm executable that GPU ranks are started from. The CLI names itself (/proc/self/exe);
// empty (a library user or test that names none): GPU ranks are forked, one multi-rank GPU run
// per process.
void set_rank_executable(const std::string& path);
const std::string& rank_executable();

// In a child just forked to be rank spec.rank: replaces it with `shardlm rank --job-fd N`, whose
// job is spec and options. Never returns (exits 1 with a message when the exec fails).
[[noreturn]] void exec_rank(const comm::GroupSpec& spec, const RankOptions& options);

// `shardlm rank`: reads the job from fd, joins the group and serves as that rank until rank 0
// shuts it down. Throws Error on a malformed job or a failed rank.
void serve_rank_job(int fd);

}  // namespace shardlm
