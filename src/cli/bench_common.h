// Pieces shared by the bench modes (one rank, a cluster, the links).
#pragma once
#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/process_stats.h"
#include "tokenizer/tokenizer.h"

namespace shardlm::cli {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// A sweep record's memory a rank: its GPU memory where its ranks ran on GPUs, else its peak RSS.
inline const char* sweep_memory_key(const nlohmann::json& record) {
  return record.value("device", "cpu") == "cuda" ? "max_device_bytes" : "max_peak_rss_bytes";
}

struct CommBenchFlags {
  std::string backend = "shm", topology = "ring";
  int ranks = 2;
  int iters = 2000;
  bool json = false;
};
void run_comm_bench(const CommBenchFlags& flags);

struct BenchSweepFlags {
  std::string model, spec, out;
  std::string link;  // --emulate-link: run split points over an emulated network
  std::string device = "cpu";  // cpu, or cuda: every point's ranks on GPUs (rank r on GPU r % GPUs)
  int repeats = 3, warmup = 1, threads = 0;
  double timeout_s = 120;
  std::shared_ptr<const Tokenizer> tokenizer;  // parsed once for every point
};
void run_sweep(BenchSweepFlags& flags);
void run_plot(const std::string& results_jsonl, const std::string& out_dir);

}  // namespace shardlm::cli
