#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "formats/model_files.h"

namespace shardlm::cli {

void add_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "Print a model's hyper-parameters and tensors");
  auto model = std::make_shared<std::string>();
  auto tensors = std::make_shared<bool>(false);
  cmd->add_option("-m,--model", *model, "Hugging Face model folder or .gguf file")->required();
  cmd->add_flag("--tensors", *tensors, "List every tensor with its dtype and shape");
  cmd->callback([=] {
    auto files = open_model_files(*model);
    const ModelConfig& c = files->config();
    fmt::print("{}\n", files->description());
    fmt::print("arch {}  layers {}  hidden {}  ffn {}  heads {}  kv heads {}  head_dim {}  vocab {}\n", arch_name(c.arch),
               c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size);
    fmt::print("rope theta {} scaling {}  max positions {}  tied embeddings {}  rms eps {}\n", c.rope_theta,
               c.rope_scaling.type, c.max_position_embeddings, c.tie_word_embeddings, c.rms_norm_eps);
    fmt::print("{:.3f} GB on disk\n", files->file_bytes() / 1e9);
    if (*tensors)
      for (const auto& name : files->tensor_names()) {
        const TensorView* t = files->find(name);
        fmt::print("  {:<50} {:<5} {}\n", name, dtype_name(t->dtype), shape_string(t->shape));
      }
  });
}

}  // namespace shardlm::cli
