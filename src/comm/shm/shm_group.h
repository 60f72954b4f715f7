// The shared-memory backend of Group: ranks are processes on one host that map one POSIX shared
// memory segment. Point-to-point messages stream through lock-free single-producer/single-consumer
// byte rings (one per ordered pair of ranks); collectives (all_reduce, all_gather, barrier) work
// directly in a per-rank collective area, with no rings involved, since decode latency is bound
// by the tensor-parallel all_reduce.
//
// stats(): point-to-point counts payload bytes; a collective counts as one message whose bytes
// sent are this rank's buffer and bytes received the other ranks' buffers it read.
//
// Lifetime: the segment exists in /dev/shm only while ranks are joining. The last rank to attach
// unlinks it, so a crash afterwards leaves nothing behind; the mapping lives until the last Group
// (root or split) of this process that uses it is destroyed.
#pragma once
#include <chrono>
#include <memory>
#include <string>

#include "comm/group.h"

namespace shardlm::comm {

struct ShmGroupOptions {
  std::string name;  // "/something": one path component, as shm_open wants it
  int rank = 0;
  int size = 1;
  std::chrono::milliseconds timeout = kDefaultTimeout;  // the join, and every later wait
};

// Joins (creating if first) the group `options.name`. Every rank calls it with the same name and
// size, in any order; it returns once all `size` ranks have attached. Throws CommError naming the
// missing ranks on timeout, or the rank that exited or gave up during the join.
std::unique_ptr<Group> make_shm_group(const ShmGroupOptions& options);

// A fresh unique name for a group (for launchers): "/shardlm-<pid>-<random>".
std::string new_shm_group_name();

}  // namespace shardlm::comm
