// Hyper-parameters of a decoder-only transformer (Llama / Qwen3 family), whichever file they
// came from: a Hugging Face config.json (transformers 4 or 5 layout) or GGUF metadata.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace shardlm {

enum class Arch { Llama, Qwen3 };
const char* arch_name(Arch a);

// How RoPE pairs the dimensions of a head: Hugging Face rotates the two halves (NeoX style);
// llama.cpp's GGUF files for arch "llama" store Q/K permuted so adjacent pairs rotate (GPT-J style).
enum class RopeStyle { Halves, Adjacent };

struct RopeScaling {
  std::string type = "default";  // "default" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Arch arch = Arch::Llama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  RopeStyle rope_style = RopeStyle::Halves;
  // Per-frequency divisors from a GGUF rope_freqs tensor (llama.cpp's form of llama3 scaling);
  // when set they replace rope_scaling.
  std::vector<float> rope_freq_factors;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // config may give one id, a list, or null
  std::string torch_dtype = "float32";  // dtype named by the file, for information

  // Checks the numbers are usable (positive, divisible where needed); throws Error naming `source`.
  void validate(const std::string& source) const;
};

// Parses a config.json text. Both transformers layouts are read: rope_theta/rope_scaling at the top
// level with torch_dtype (v4), or a nested rope_parameters with dtype (v5). Throws Error naming
// `source` on a missing or wrong-typed field or an unknown model_type.
ModelConfig parse_hf_config(const std::string& json_text, const std::string& source);
ModelConfig load_hf_config(const std::string& path);

// Writes config.json the way transformers does for LlamaForCausalLM / Qwen3ForCausalLM.
// style 4 writes the transformers-4 layout, 5 the transformers-5 layout.
std::string hf_config_json(const ModelConfig& cfg, int style);

}  // namespace shardlm
