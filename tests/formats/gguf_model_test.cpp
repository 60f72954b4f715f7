// GGUF metadata -> ModelConfig and TokenizerSpec: defaults as llama.cpp applies them, and an
// Error naming the file and the key for everything unsupported or inconsistent.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/model_files.h"
#include "test_paths.h"

using namespace shardlm;

namespace {

// A minimal llama file's metadata; tests change entries before writing.
GgufWriter base(const std::string& arch = "llama") {
  GgufWriter w;
  w.add_string("general.architecture", arch);
  w.add_uint32(arch + ".context_length", 1024);
  w.add_uint32(arch + ".embedding_length", 64);
  w.add_uint32(arch + ".block_count", 2);
  w.add_uint32(arch + ".feed_forward_length", 128);
  w.add_uint32(arch + ".attention.head_count", 4);
  w.add_uint32(arch + ".attention.head_count_kv", 2);
  w.add_float32(arch + ".attention.layer_norm_rms_epsilon", 1e-5f);
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", "llama-bpe");
  w.add_string_array("tokenizer.ggml.tokens", {"a", "b", "ab", "<|eot_id|>", "<tool>", "[PAD5]", "<|end_of_text|>"});
  w.add_int32_array("tokenizer.ggml.token_type", {1, 1, 1, 3, 4, 5, 3});
  w.add_string_array("tokenizer.ggml.merges", {"a b"});
  w.add_uint32("tokenizer.ggml.bos_token_id", 2);
  w.add_uint32("tokenizer.ggml.eos_token_id", 3);
  return w;
}

void set(GgufWriter& w, const std::string& key, GgufValue v) {
  for (auto& [k, old] : w.metadata)
    if (k == key) {
      old = std::move(v);
      return;
    }
  w.add(key, std::move(v));
}
void erase(GgufWriter& w, const std::string& key) {
  std::erase_if(w.metadata, [&](const auto& kv) { return kv.first == key; });
}

std::string path_of(const GgufWriter& w, const std::string& name) {
  std::string dir = test::scratch_dir("gguf_model_" + name);
  w.write(dir + "/m.gguf");
  return dir + "/m.gguf";
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(GgufModel, ConfigDefaultsFollowLlamaCpp) {
  GgufFile f(path_of(base(), "defaults"));
  ModelConfig c = gguf_model_config(f);
  EXPECT_EQ(c.arch, Arch::Llama);
  EXPECT_EQ(c.head_dim, 16);           // no key_length: embedding / heads
  EXPECT_EQ(c.vocab_size, 7);          // no vocab_size: the token count
  EXPECT_EQ(c.rope_theta, 10000.0);    // no freq_base: llama.cpp's default
  EXPECT_EQ(c.max_position_embeddings, 1024);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_TRUE(c.tie_word_embeddings);  // no output.weight
  EXPECT_EQ(c.rope_style, RopeStyle::Adjacent);
  EXPECT_TRUE(c.rope_freq_factors.empty());
  EXPECT_EQ(c.bos_token_id, 2);
  // eos, then the control tokens llama.cpp also ends generation at.
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{3, 6}));

  TokenizerSpec t = gguf_tokenizer_spec(f);
  EXPECT_EQ(t.vocab, (std::vector<std::string>{"a", "b", "ab"}));
  EXPECT_EQ(t.merges, (std::vector<std::pair<std::string, std::string>>{{"a", "b"}}));
  ASSERT_EQ(t.added_tokens.size(), 3u);
  EXPECT_EQ(t.added_tokens[0].content, "<|eot_id|>");
  EXPECT_TRUE(t.added_tokens[0].special);
  EXPECT_EQ(t.added_tokens[1].content, "<tool>");
  EXPECT_FALSE(t.added_tokens[1].special);
  EXPECT_EQ(t.added_tokens[2].id, 6);
  EXPECT_EQ(t.eos_ids, (std::vector<int32_t>{3, 6}));
  EXPECT_TRUE(t.ignore_merges);
  EXPECT_EQ(t.source, f.path());

  GgufWriter q = base("qwen3");
  set(q, "qwen3.attention.key_length", GgufValue::uint(kGgufU32, 32));
  set(q, "qwen3.rope.freq_base", GgufValue::real(kGgufF32, 1000000.0));
  set(q, "tokenizer.ggml.pre", GgufValue::string("qwen2"));
  GgufFile fq(path_of(q, "qwen3"));
  ModelConfig cq = gguf_model_config(fq);
  EXPECT_EQ(cq.arch, Arch::Qwen3);
  EXPECT_EQ(cq.head_dim, 32);
  EXPECT_EQ(cq.rope_theta, 1000000.0);
  EXPECT_EQ(cq.rope_style, RopeStyle::Halves);
  TokenizerSpec tq = gguf_tokenizer_spec(fq);
  EXPECT_TRUE(tq.normalize_nfc);
  EXPECT_FALSE(tq.ignore_merges);
}

TEST(GgufModel, RopeFreqsBecomeFactors) {
  GgufWriter w = base();
  std::vector<float> factors = {1, 1, 2.5f, 4, 8, 8, 8, 8};
  w.tensors.push_back({"rope_freqs.weight", DType::F32, {8}, factors.data(), {}});
  EXPECT_EQ(gguf_model_config(GgufFile(path_of(w, "freqs"))).rope_freq_factors, factors);

  GgufWriter shortw = base();
  shortw.tensors.push_back({"rope_freqs.weight", DType::F32, {4}, factors.data(), {}});
  std::string p = path_of(shortw, "freqs_short");
  EXPECT_EQ(error_of([&] { gguf_model_config(GgufFile(p)); }),
            p + ": rope_freqs.weight is f32 [4] but head_dim 16 needs 8 floats");

  GgufWriter zero = base();
  std::vector<float> z(8, 0.0f);
  zero.tensors.push_back({"rope_freqs.weight", DType::F32, {8}, z.data(), {}});
  p = path_of(zero, "freqs_zero");
  EXPECT_NE(error_of([&] { gguf_model_config(GgufFile(p)); }).find("factors must be positive"), std::string::npos);
}

TEST(GgufModel, UnsupportedMetadataIsAnErrorNamingFileAndKey) {
  struct Case {
    std::string name;
    std::function<void(GgufWriter&)> edit;
    std::string message;  // after "<path>: "
    bool tokenizer = false;
  };
  std::vector<Case> cases = {
      {"arch", [](GgufWriter& w) { set(w, "general.architecture", GgufValue::string("gemma")); },
       "architecture 'gemma' is not supported (supported: llama, qwen3)"},
      {"no_arch", [](GgufWriter& w) { erase(w, "general.architecture"); },
       "missing metadata 'general.architecture'"},
      {"no_layers", [](GgufWriter& w) { erase(w, "llama.block_count"); }, "missing metadata 'llama.block_count'"},
      {"wrong_type", [](GgufWriter& w) { set(w, "llama.block_count", GgufValue::string("2")); },
       "metadata 'llama.block_count' must be an integer (it is string)"},
      {"per_layer_heads",
       [](GgufWriter& w) { set(w, "llama.attention.head_count_kv", GgufValue::number_array(kGgufU32, {2, 2})); },
       "metadata 'llama.attention.head_count_kv' must be an integer (it is an array of u32)"},
      {"no_eps", [](GgufWriter& w) { erase(w, "llama.attention.layer_norm_rms_epsilon"); },
       "missing metadata 'llama.attention.layer_norm_rms_epsilon'"},
      {"zero_heads", [](GgufWriter& w) { set(w, "llama.attention.head_count", GgufValue::uint(kGgufU32, 0)); },
       "llama.attention.head_count must be positive (got 0)"},
      {"heads_kv", [](GgufWriter& w) { set(w, "llama.attention.head_count_kv", GgufValue::uint(kGgufU32, 3)); },
       "num_attention_heads (4) is not a multiple of num_key_value_heads (3)"},
      {"scaling", [](GgufWriter& w) { set(w, "llama.rope.scaling.type", GgufValue::string("yarn")); },
       "rope scaling 'yarn' (llama.rope.scaling.type) is not supported"},
      {"value_length", [](GgufWriter& w) { set(w, "llama.attention.value_length", GgufValue::uint(kGgufU32, 8)); },
       "llama.attention.value_length (8) differs from key_length (16): not supported"},
      {"bos_range", [](GgufWriter& w) { set(w, "tokenizer.ggml.bos_token_id", GgufValue::uint(kGgufU32, 7)); },
       "metadata 'tokenizer.ggml.bos_token_id' = 7 is not a token id (the vocabulary has 7 tokens)"},
      {"tok_model", [](GgufWriter& w) { set(w, "tokenizer.ggml.model", GgufValue::string("llama")); },
       "tokenizer model 'llama' is not supported (supported: gpt2, i.e. byte-level BPE)", true},
      {"tok_pre", [](GgufWriter& w) { set(w, "tokenizer.ggml.pre", GgufValue::string("deepseek-llm")); },
       "pre-tokenizer 'deepseek-llm' (tokenizer.ggml.pre) is not supported (supported: qwen2, llama-bpe)", true},
      {"no_pre", [](GgufWriter& w) { erase(w, "tokenizer.ggml.pre"); },
       "missing metadata 'tokenizer.ggml.pre' (re-convert with a current llama.cpp)", true},
      {"no_merges", [](GgufWriter& w) { erase(w, "tokenizer.ggml.merges"); },
       "missing metadata 'tokenizer.ggml.merges'", true},
      {"bad_merge", [](GgufWriter& w) { set(w, "tokenizer.ggml.merges", GgufValue::string_array({"ab"})); },
       "tokenizer.ggml.merges[0] = \"ab\" is not \"left right\"", true},
      {"types_len", [](GgufWriter& w) { set(w, "tokenizer.ggml.token_type", GgufValue::number_array(kGgufI32, {1})); },
       "tokenizer.ggml.token_type has 1 entries but tokenizer.ggml.tokens has 7", true},
      {"type_value",
       [](GgufWriter& w) {
         set(w, "tokenizer.ggml.token_type", GgufValue::number_array(kGgufI32, {1, 1, 1, 3, 4, 5, 9}));
       },
       "tokenizer.ggml.token_type[6] = 9 is not a token type", true},
      {"tokens_type", [](GgufWriter& w) { set(w, "tokenizer.ggml.tokens", GgufValue::number_array(kGgufI32, {1})); },
       "metadata 'tokenizer.ggml.tokens' must be an array of strings", true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    GgufWriter w = base();
    c.edit(w);
    std::string p = path_of(w, c.name);
    std::string e = c.tokenizer ? error_of([&] { gguf_tokenizer_spec(GgufFile(p)); })
                                : error_of([&] { gguf_model_config(GgufFile(p)); });
    EXPECT_EQ(e, p + ": " + c.message);
  }
}

TEST(GgufModel, OpenGgufModelRenamesTensorsAndReportsFile) {
  GgufWriter w = base();
  std::vector<float> e(7 * 64, 0.5f), n(64, 1.0f), freqs(8, 1.0f);
  w.tensors.push_back({"rope_freqs.weight", DType::F32, {8}, freqs.data(), {}});
  w.tensors.push_back({"token_embd.weight", DType::F32, {7, 64}, e.data(), {}});
  w.tensors.push_back({"blk.1.attn_norm.weight", DType::F32, {64}, n.data(), {}});
  w.tensors.push_back({"blk.0.attn_q.bias", DType::F32, {64}, n.data(), {}});  // no counterpart: not listed
  std::string p = path_of(w, "open");
  auto m = open_gguf_model(p);
  EXPECT_EQ(m->tensor_names(), (std::vector<std::string>{"model.embed_tokens.weight",
                                                         "model.layers.1.input_layernorm.weight"}));
  const TensorView* t = m->find("model.embed_tokens.weight");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->name, "model.embed_tokens.weight");
  EXPECT_EQ(t->shape, (std::vector<int64_t>{7, 64}));
  EXPECT_EQ(static_cast<const float*>(t->data)[5], 0.5f);
  EXPECT_EQ(m->find("token_embd.weight"), nullptr);
  EXPECT_EQ(m->config().rope_freq_factors.size(), 8u);
  EXPECT_EQ(m->description(), "GGUF file " + p + " (v3, 4 tensors)");
  EXPECT_EQ(m->file_bytes(), int64_t(std::filesystem::file_size(p)));
  EXPECT_EQ(m->tokenizer().vocab.size(), 3u);
}

TEST(GgufModel, PreTokenizerNamesGiveTheTokenizerJsonRegexes) {
  // Llama 3's tokenizer.json Split regex; Qwen2/3's differs only in splitting digits one by one.
  const std::string llama3 =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
      "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  EXPECT_EQ(gguf_pre_tokenizer_regex("llama-bpe"), llama3);
  EXPECT_EQ(gguf_pre_tokenizer_regex("llama3"), llama3);
  EXPECT_EQ(gguf_pre_tokenizer_regex("llama-v3"), llama3);
  std::string qwen = llama3;
  qwen.replace(qwen.find("\\p{N}{1,3}"), 10, "\\p{N}");
  EXPECT_EQ(gguf_pre_tokenizer_regex("qwen2"), qwen);
  EXPECT_EQ(gguf_pre_tokenizer_regex("gpt-2"), "");
}
