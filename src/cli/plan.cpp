#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/size_option.h"
#include "core/error.h"
#include "core/log.h"
#include "core/process_stats.h"
#include "formats/model_files.h"
#include "parallel/plan.h"
#include "runtime/plan_memory.h"

namespace shardlm::cli {

void add_plan(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "plan", "Print which rank holds which layers and slices, and the memory each needs, as JSON (before loading anything)");
  auto model = std::make_shared<std::string>();
  auto o = std::make_shared<PlanOptions>();
  auto weights = std::make_shared<std::vector<double>>();
  auto context = std::make_shared<int64_t>(0);
  auto batch = std::make_shared<int>(1);
  auto kv_memory = std::make_shared<std::string>();
  cmd->add_option("-m,--model", *model, "Hugging Face model folder or .gguf file")->required();
  cmd->add_option("--pp", o->pp, "Pipeline-parallel stages")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--tp", o->tp, "Tensor-parallel ranks per stage")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--stage-weights", *weights, "Relative capacity of each stage (e.g. --stage-weights 1 1 2)")
      ->delimiter(',');
  cmd->add_option("--context", *context, "Positions a sequence may hold, for the KV cache (0: the model's, up to 4096)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--max-batch", *batch, "Sequences decoding together, for the KV cache (as generate's)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--kv-memory", *kv_memory, "KV cache per rank instead, e.g. 512M or 4G (as generate's)");
  cmd->callback([=] {
    o->stage_weights = *weights;
    auto files = open_model_files(*model);
    const Plan p = make_plan(files->config(), *o);
    const int64_t positions = context_or_default(*context, files->config());
    const int64_t kv_budget = kv_memory->empty() ? 0 : parse_size(*kv_memory, "--kv-memory");
    const std::vector<RankMemory> memory = estimate_memory(*files, p, positions, *batch, kv_budget);
    nlohmann::json j = plan_to_json(p, files->config());
    int64_t largest_cpu = 0, largest_gpu = 0;
    for (int r = 0; r < p.world_size(); ++r) {
      const RankMemory& m = memory[size_t(r)];
      nlohmann::json& rank = j["ranks"][size_t(r)];
      rank["weight_bytes"] = m.weight_bytes;
      rank["embedding_bytes"] = m.embedding_bytes;
      rank["kv_cache_bytes"] = m.kv_cache_bytes;
      largest_cpu = std::max(largest_cpu, m.weight_bytes + m.kv_cache_bytes);
      largest_gpu = std::max(largest_gpu, m.weight_bytes + m.embedding_bytes + m.kv_cache_bytes);
      log_info("plan: rank {} (stage {}, tp {}): weights {}, KV cache {}{}", r, p.stage_of(r), p.tp_rank_of(r),
               gib(m.weight_bytes), gib(m.kv_cache_bytes),
               m.embedding_bytes ? ", embedding " + gib(m.embedding_bytes) + " (copied on a GPU; mapped on a CPU)" : "");
    }
    // The largest rank's weights and KV cache: a CPU rank maps its embedding from the file, a GPU
    // rank copies it (plus scratch of its own, not counted here).
    j["memory"] = {{"context", positions},
                   {"sequences", *batch},
                   {"kv_memory", kv_budget},
                   {"largest_cpu_rank_bytes", largest_cpu},
                   {"largest_gpu_rank_bytes", largest_gpu}};
    fmt::print("{}\n", j.dump(2));
  });
}

}  // namespace shardlm::cli
