// config.json as written by transformers 4 (top-level rope_theta/rope_scaling, torch_dtype) and
// transformers 5 (nested rope_parameters, dtype).
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "formats/json_error.h"
#include "formats/model_config.h"

namespace shardlm {

using nlohmann::json;

const char* arch_name(Arch a) { return a == Arch::Qwen3 ? "qwen3" : "llama"; }

namespace {

template <class T>
T required(const json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) fail("{}: missing field '{}'", source, key);
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    fail("{}: field '{}' has the wrong type ({})", source, key, it->type_name());
  }
}

template <class T>
T optional(const json& j, const char* key, T fallback, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    fail("{}: field '{}' has the wrong type ({})", source, key, it->type_name());
  }
}

std::vector<int64_t> id_list(const json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  if (it->is_number_integer()) return {it->get<int64_t>()};
  if (it->is_array()) {
    std::vector<int64_t> ids;
    for (auto& v : *it) {
      if (!v.is_number_integer()) fail("{}: '{}' must hold integers", source, key);
      ids.push_back(v.get<int64_t>());
    }
    return ids;
  }
  fail("{}: '{}' must be an integer, a list or null", source, key);
}

void read_rope(const json& params, ModelConfig& cfg, const std::string& source) {
  if (!params.is_object()) fail("{}: rope parameters must be an object", source);
  cfg.rope_theta = optional<double>(params, "rope_theta", cfg.rope_theta, source);
  std::string type = optional<std::string>(params, "rope_type", "", source);
  if (type.empty()) type = optional<std::string>(params, "type", "default", source);
  cfg.rope_scaling.type = type;
  if (type == "llama3") {
    cfg.rope_scaling.factor = required<double>(params, "factor", source);
    cfg.rope_scaling.low_freq_factor = required<double>(params, "low_freq_factor", source);
    cfg.rope_scaling.high_freq_factor = required<double>(params, "high_freq_factor", source);
    cfg.rope_scaling.original_max_position_embeddings =
        required<int64_t>(params, "original_max_position_embeddings", source);
  } else if (type != "default") {
    fail("{}: rope type '{}' is not supported (supported: default, llama3)", source, type);
  }
}

}  // namespace

void ModelConfig::validate(const std::string& source) const {
  auto positive = [&](int64_t v, const char* what) {
    if (v <= 0) fail("{}: {} must be positive (got {})", source, what, v);
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_layers, "num_hidden_layers");
  positive(num_heads, "num_attention_heads");
  positive(num_kv_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(max_position_embeddings, "max_position_embeddings");
  // Bounds that keep every derived size far from overflow; real models are well inside them.
  if (vocab_size > (1 << 24) || hidden_size > (1 << 20) || intermediate_size > (1 << 22) || num_layers > 4096 ||
      num_heads > 4096 || head_dim > 4096 || max_position_embeddings > (int64_t(1) << 24))
    fail("{}: hyper-parameters out of range", source);
  if (num_heads % num_kv_heads != 0)
    fail("{}: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})", source, num_heads, num_kv_heads);
  if (head_dim % 2 != 0) fail("{}: head_dim ({}) must be even for rotary embeddings", source, head_dim);
  if (!(rms_norm_eps > 0)) fail("{}: rms_norm_eps must be positive", source);
  if (!(rope_theta > 0)) fail("{}: rope_theta must be positive", source);
  if (attention_bias) fail("{}: attention_bias = true is not supported", source);
}

ModelConfig parse_hf_config(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", source, json_error_text(e));
  }
  if (!j.is_object()) fail("{}: expected a JSON object", source);

  ModelConfig cfg;
  std::string model_type = required<std::string>(j, "model_type", source);
  if (model_type == "llama") cfg.arch = Arch::Llama;
  else if (model_type == "qwen3") cfg.arch = Arch::Qwen3;
  else fail("{}: model_type '{}' is not supported (supported: llama, qwen3)", source, model_type);

  cfg.vocab_size = required<int64_t>(j, "vocab_size", source);
  cfg.hidden_size = required<int64_t>(j, "hidden_size", source);
  cfg.intermediate_size = required<int64_t>(j, "intermediate_size", source);
  cfg.num_layers = required<int64_t>(j, "num_hidden_layers", source);
  cfg.num_heads = required<int64_t>(j, "num_attention_heads", source);
  cfg.num_kv_heads = optional<int64_t>(j, "num_key_value_heads", cfg.num_heads, source);
  cfg.head_dim = optional<int64_t>(j, "head_dim", cfg.num_heads > 0 ? cfg.hidden_size / cfg.num_heads : 0, source);
  cfg.max_position_embeddings = optional<int64_t>(j, "max_position_embeddings", 2048, source);
  cfg.rms_norm_eps = optional<double>(j, "rms_norm_eps", 1e-6, source);
  cfg.tie_word_embeddings = optional<bool>(j, "tie_word_embeddings", false, source);
  cfg.attention_bias = optional<bool>(j, "attention_bias", false, source);
  if (optional<bool>(j, "mlp_bias", false, source)) fail("{}: mlp_bias = true is not supported", source);
  std::string act = optional<std::string>(j, "hidden_act", "silu", source);
  if (act != "silu") fail("{}: hidden_act '{}' is not supported (only silu)", source, act);
  if (optional<bool>(j, "use_sliding_window", false, source))
    fail("{}: use_sliding_window = true is not supported", source);
  auto bos = id_list(j, "bos_token_id", source);
  if (!bos.empty()) cfg.bos_token_id = bos.front();
  cfg.eos_token_ids = id_list(j, "eos_token_id", source);
  cfg.torch_dtype = optional<std::string>(j, "dtype", optional<std::string>(j, "torch_dtype", "float32", source), source);

  // transformers 5: everything about RoPE in rope_parameters; transformers 4: top-level fields.
  if (auto it = j.find("rope_parameters"); it != j.end() && !it->is_null()) {
    read_rope(*it, cfg, source);
  } else {
    cfg.rope_theta = optional<double>(j, "rope_theta", 10000.0, source);
    if (auto rs = j.find("rope_scaling"); rs != j.end() && !rs->is_null()) read_rope(*rs, cfg, source);
  }
  cfg.validate(source);
  return cfg;
}

ModelConfig load_hf_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_hf_config(ss.str(), path);
}

std::string hf_config_json(const ModelConfig& cfg, int style) {
  json j;
  bool qwen = cfg.arch == Arch::Qwen3;
  j["architectures"] = {qwen ? "Qwen3ForCausalLM" : "LlamaForCausalLM"};
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = cfg.bos_token_id ? json(*cfg.bos_token_id) : json(nullptr);
  if (cfg.eos_token_ids.empty()) j["eos_token_id"] = nullptr;
  else if (cfg.eos_token_ids.size() == 1) j["eos_token_id"] = cfg.eos_token_ids[0];
  else j["eos_token_id"] = cfg.eos_token_ids;
  j["head_dim"] = cfg.head_dim;
  j["hidden_act"] = "silu";
  j["hidden_size"] = cfg.hidden_size;
  j["initializer_range"] = 0.02;
  j["intermediate_size"] = cfg.intermediate_size;
  j["max_position_embeddings"] = cfg.max_position_embeddings;
  j["model_type"] = arch_name(cfg.arch);
  j["num_attention_heads"] = cfg.num_heads;
  j["num_hidden_layers"] = cfg.num_layers;
  j["num_key_value_heads"] = cfg.num_kv_heads;
  j["rms_norm_eps"] = cfg.rms_norm_eps;
  j["tie_word_embeddings"] = cfg.tie_word_embeddings;
  j["use_cache"] = true;
  j["vocab_size"] = cfg.vocab_size;
  if (qwen) {
    j["max_window_layers"] = cfg.num_layers;
    j["sliding_window"] = nullptr;
    j["use_sliding_window"] = false;
  } else {
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  }
  json rope;
  if (cfg.rope_scaling.type == "llama3") {
    rope = {{"factor", cfg.rope_scaling.factor},
            {"low_freq_factor", cfg.rope_scaling.low_freq_factor},
            {"high_freq_factor", cfg.rope_scaling.high_freq_factor},
            {"original_max_position_embeddings", cfg.rope_scaling.original_max_position_embeddings},
            {"rope_type", "llama3"}};
  }
  if (style >= 5) {
    if (rope.is_null()) rope = {{"rope_type", "default"}};
    rope["rope_theta"] = cfg.rope_theta;
    j["rope_parameters"] = rope;
    j["dtype"] = cfg.torch_dtype;
    j["transformers_version"] = "5.0.0";
  } else {
    j["rope_theta"] = cfg.rope_theta;
    j["rope_scaling"] = rope;  // null for default RoPE, as transformers 4 writes it
    j["torch_dtype"] = cfg.torch_dtype;
    j["transformers_version"] = "4.51.0";
  }
  return j.dump(2) + "\n";
}

}  // namespace shardlm
