// `shardlm worker`: a process on another machine that waits for rank 0 to give it its part of a
// run. It listens on one address, accepts only coordinators that prove the cluster secret, runs
// each job (load its slice, join the tcp group, serve steps) in a child process, then waits for
// the next one.
#pragma once
#include <atomic>
#include <chrono>
#include <string>

namespace shardlm {

struct WorkerOptions {
  std::string listen = "0.0.0.0:7070";  // host:port
  std::string secret;
  int threads = 0;    // 0: all cores of this host
  int max_jobs = -1;  // leave after this many jobs (tests); -1: serve forever
  std::chrono::milliseconds timeout{60000};
};

// Serves until max_jobs jobs ran or *stop becomes true (checked a few times a second).
void run_worker(const WorkerOptions& options, const std::atomic<bool>* stop = nullptr);

}  // namespace shardlm
