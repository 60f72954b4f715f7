#include "cli/commands.h"
#include "core/log.h"
#include "formats/model_files.h"

namespace shardlm::cli {

void add_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert", "Write a model as a llama.cpp GGUF file (f32, f16, bf16, q8_0 or q4_0)");
  auto model = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto dtype = std::make_shared<std::string>("q8_0");
  cmd->add_option("-m,--model", *model, "Hugging Face model folder (or .gguf file)")->required();
  cmd->add_option("-o,--out", *out, "Output .gguf file")->required();
  cmd->add_option("--dtype", *dtype, "dtype of the weight matrices")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0"}))
      ->capture_default_str();
  cmd->callback([=] {
    auto files = open_model_files(*model);
    write_gguf_model(*files, *out, parse_dtype(*dtype));
    log_info("convert: wrote {}", *out);
  });
}

}  // namespace shardlm::cli
