// What this process costs the machine (peak resident memory, wall time) and what the machine has left.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace shardlm {

// Peak resident set size in bytes (VmHWM), the figure `generate --json` reports.
int64_t peak_rss_bytes();
// Current resident set size in bytes (VmRSS).
int64_t current_rss_bytes();
// Memory the kernel can give without swapping (MemAvailable), in bytes; -1 where unknown.
int64_t available_memory_bytes();
// The host's memory (MemTotal), in bytes; -1 where unknown.
int64_t total_memory_bytes();
// "12.50 GiB": binary units, as sizes on the command line (--kv-memory 4G) are read.
std::string gib(int64_t bytes);
// Starts the peak over from the current size (Linux clear_refs), e.g. after a measurement's
// scratch buffer is freed, so the peak reported is the model's.
void reset_peak_rss();

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  void reset() { start_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace shardlm
