#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "formats/model_files.h"
#include "parallel/plan.h"

namespace shardlm::cli {

void add_plan(CLI::App& app) {
  auto* cmd = app.add_subcommand("plan", "Print which rank holds which layers and slices, as JSON");
  auto model = std::make_shared<std::string>();
  auto o = std::make_shared<PlanOptions>();
  auto weights = std::make_shared<std::vector<double>>();
  cmd->add_option("-m,--model", *model, "Hugging Face model folder or .gguf file")->required();
  cmd->add_option("--pp", o->pp, "Pipeline-parallel stages")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--tp", o->tp, "Tensor-parallel ranks per stage")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--stage-weights", *weights, "Relative capacity of each stage (e.g. --stage-weights 1 1 2)")
      ->delimiter(',');
  cmd->callback([=] {
    o->stage_weights = *weights;
    auto files = open_model_files(*model);
    Plan p = make_plan(files->config(), *o);
    fmt::print("{}\n", plan_to_json(p, files->config()).dump(2));
  });
}

}  // namespace shardlm::cli
