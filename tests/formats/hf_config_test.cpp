#include <gtest/gtest.h>

#include "core/error.h"
#include "formats/model_config.h"

using namespace shardlm;

namespace {
// Trimmed from meta-llama/Llama-3.2-1B's config.json (transformers 4 layout).
const char* kLlamaV4 = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
  "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "vocab_size": 128256})";
// A Qwen3 config in the transformers 5 layout, with null ids.
const char* kQwenV5 = R"({
  "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072,
  "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
  "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "tie_word_embeddings": true, "vocab_size": 151936,
  "bos_token_id": null, "eos_token_id": null, "pad_token_id": null, "dtype": "bfloat16",
  "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}, "use_sliding_window": false})";
}  // namespace

TEST(HfConfig, ReadsTransformers4Layout) {
  ModelConfig c = parse_hf_config(kLlamaV4, "config.json");
  EXPECT_EQ(c.arch, Arch::Llama);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_TRUE(c.tie_word_embeddings);
}

TEST(HfConfig, ReadsTransformers5LayoutAndNulls) {
  ModelConfig c = parse_hf_config(kQwenV5, "config.json");
  EXPECT_EQ(c.arch, Arch::Qwen3);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_FALSE(c.bos_token_id.has_value());
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(HfConfig, WrittenConfigReadsBackInBothLayouts) {
  ModelConfig c = parse_hf_config(kLlamaV4, "a");
  for (int style : {4, 5}) {
    ModelConfig d = parse_hf_config(hf_config_json(c, style), "b");
    EXPECT_EQ(d.hidden_size, c.hidden_size);
    EXPECT_EQ(d.rope_scaling.type, "llama3");
    EXPECT_DOUBLE_EQ(d.rope_theta, c.rope_theta);
    EXPECT_EQ(d.eos_token_ids, c.eos_token_ids);
    EXPECT_EQ(d.tie_word_embeddings, c.tie_word_embeddings);
    std::string text = hf_config_json(c, style);
    EXPECT_EQ(text.find("rope_parameters") != std::string::npos, style == 5);
    EXPECT_EQ(text.find("torch_dtype") != std::string::npos, style == 4);
  }
}

TEST(HfConfig, BadConfigsNameTheProblem) {
  auto err = [](const std::string& text) -> std::string {
    try {
      parse_hf_config(text, "m/config.json");
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(err("{").find("m/config.json: not valid JSON"), std::string::npos);
  EXPECT_NE(err(R"({"model_type": "gpt_neox"})").find("model_type 'gpt_neox' is not supported"), std::string::npos);
  EXPECT_NE(err(R"({"model_type": "llama"})").find("missing field 'vocab_size'"), std::string::npos);
  std::string bad_type = kLlamaV4;
  bad_type.replace(bad_type.find("\"hidden_size\": 2048"), 19, "\"hidden_size\": \"big\"");
  EXPECT_NE(err(bad_type).find("'hidden_size' has the wrong type"), std::string::npos);
  std::string bad_heads = kLlamaV4;
  bad_heads.replace(bad_heads.find("\"num_key_value_heads\": 8"), 24, "\"num_key_value_heads\": 5");
  EXPECT_NE(err(bad_heads).find("not a multiple"), std::string::npos);
  std::string yarn = kLlamaV4;
  yarn.replace(yarn.find("\"llama3\""), 8, "\"yarn\"");
  EXPECT_NE(err(yarn).find("rope type 'yarn' is not supported"), std::string::npos);
}
