#include "cli/commands.h"
#include "core/log.h"
#include "model/synthetic.h"

namespace shardlm::cli {

void add_make_model(CLI::App& app) {
  auto* cmd = app.add_subcommand("make-model", "Write a Hugging Face model folder with random weights (for tests and benchmarks)");
  auto o = std::make_shared<SyntheticModelOptions>();
  auto arch = std::make_shared<std::string>("llama");
  auto dtype = std::make_shared<std::string>("f32");
  auto shard_mib = std::make_shared<int64_t>(2048);
  auto tie = std::make_shared<std::string>("preset");
  cmd->add_option("--arch", *arch, "Architecture")->check(CLI::IsMember({"llama", "qwen3"}))->capture_default_str();
  cmd->add_option("--preset", o->preset, "Size: tiny (4 layers, hidden 256), small (8 layers, hidden 1024, GQA), 1b (Llama-3.2-1B shape), 8b (Llama-3.1-8B shape, 16 GB in bf16)")
      ->check(CLI::IsMember({"tiny", "small", "1b", "8b"}))
      ->capture_default_str();
  cmd->add_option("--dtype", *dtype, "Weight dtype")->check(CLI::IsMember({"f32", "f16", "bf16"}))->capture_default_str();
  cmd->add_option("--tokenizer", o->tokenizer_dir, "Folder with tokenizer.json (e.g. assets/qwen3)")->required();
  cmd->add_option("--seed", o->seed, "Random seed")->capture_default_str();
  cmd->add_option("--out", o->out_dir, "Output folder")->required();
  cmd->add_option("--shard-mib", *shard_mib, "Largest safetensors shard in MiB (smaller models still shard below it)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--tie", *tie, "Tie lm_head to the embedding")->check(CLI::IsMember({"preset", "yes", "no"}))->capture_default_str();
  cmd->add_option("--context", o->context, "max_position_embeddings (default per preset)")->check(CLI::PositiveNumber);
  cmd->add_option("--config-style", o->config_style, "config.json layout of transformers 4 or 5")
      ->check(CLI::IsMember({4, 5}))
      ->capture_default_str();
  cmd->add_option("--threads", o->threads, "Threads (0: all cores)")->capture_default_str();
  cmd->callback([=] {
    o->arch = *arch == "qwen3" ? Arch::Qwen3 : Arch::Llama;
    o->dtype = parse_dtype(*dtype);
    o->shard_bytes = *shard_mib << 20;
    if (*tie != "preset") o->tie_embeddings = *tie == "yes";
    ModelConfig c = write_synthetic_model(*o);
    log_info("make-model: wrote {} {} ({} layers, hidden {}, vocab {}, {}) to {}", arch_name(c.arch), o->preset, c.num_layers,
             c.hidden_size, c.vocab_size, *dtype, o->out_dir);
  });
}

}  // namespace shardlm::cli
