// A GGUF file seen as a model: hyper-parameters from "<arch>.*" metadata, the tokenizer from
// "tokenizer.ggml.*", and tensors under their Hugging Face names.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <unordered_map>

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/model_files.h"

namespace shardlm {

namespace {

// llama.cpp token types.
enum TokenType { kUndefined = 0, kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

int64_t required_int(const GgufFile& f, const std::string& key) {
  auto v = f.get_int(key);
  if (!v) fail("{}: missing metadata '{}'", f.path(), key);
  return *v;
}

const GgufValue& required_array(const GgufFile& f, const std::string& key, bool strings) {
  const GgufValue* v = f.get(key);
  if (!v) fail("{}: missing metadata '{}'", f.path(), key);
  if (v->kind != GgufValue::Kind::Array || (v->gguf_type == kGgufString) != strings)
    fail("{}: metadata '{}' must be an array of {}", f.path(), key, strings ? "strings" : "numbers");
  return *v;
}

// Token ids from metadata must name an entry of tokenizer.ggml.tokens.
std::optional<int64_t> token_id(const GgufFile& f, const std::string& key) {
  auto v = f.get_int(key);
  if (!v) return std::nullopt;
  const GgufValue* tokens = f.get("tokenizer.ggml.tokens");
  size_t n = tokens && tokens->kind == GgufValue::Kind::Array ? tokens->array_size() : 0;
  if (*v < 0 || *v > INT32_MAX || (n > 0 && uint64_t(*v) >= n))
    fail("{}: metadata '{}' = {} is not a token id (the vocabulary has {} tokens)", f.path(), key, *v, n);
  return v;
}

// Control tokens llama.cpp ends generation at by their text, whatever the metadata says.
bool ends_generation_by_text(const std::string& t) {
  for (const char* e : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
                        "<EOT>", "_<EOT>", "<|end_of_text|>"})
    if (t == e) return true;
  return false;
}

std::vector<int64_t> end_of_generation_ids(const GgufFile& f) {
  std::vector<int64_t> ids;
  auto add = [&](int64_t id) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  };
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"})
    if (auto id = token_id(f, key)) add(*id);
  const GgufValue* tokens = f.get("tokenizer.ggml.tokens");
  const GgufValue* types = f.get("tokenizer.ggml.token_type");
  if (tokens && types && tokens->kind == GgufValue::Kind::Array && tokens->gguf_type == kGgufString &&
      types->kind == GgufValue::Kind::Array && types->numbers.size() == tokens->strings.size()) {
    for (size_t id = 0; id < tokens->strings.size() && id <= size_t(INT32_MAX); ++id)
      if (types->numbers[id] == double(kControl) && ends_generation_by_text(tokens->strings[id])) add(int64_t(id));
  }
  return ids;
}

class GgufModel final : public ModelFiles {
 public:
  explicit GgufModel(const std::string& path) : file_(path), config_(gguf_model_config(file_)) {
    for (const auto& t : file_.tensors()) {
      std::string hf = hf_name_from_gguf(t.name);
      if (hf.empty()) continue;  // rope_freqs (now in the config) or a tensor these archs do not use
      TensorView v = t;
      v.name = hf;
      names_.push_back(hf);
      by_name_.emplace(hf, std::move(v));
    }
  }

  const ModelConfig& config() const override { return config_; }
  const TensorView* find(const std::string& hf_name) const override {
    auto it = by_name_.find(hf_name);
    return it == by_name_.end() ? nullptr : &it->second;
  }
  std::vector<std::string> tensor_names() const override { return names_; }
  TokenizerSpec tokenizer() const override { return gguf_tokenizer_spec(file_); }
  std::string description() const override {
    return fmt::format("GGUF file {} (v{}, {} tensors)", file_.path(), file_.version(), file_.tensors().size());
  }
  int64_t file_bytes() const override { return int64_t(file_.file_size()); }

 private:
  GgufFile file_;
  ModelConfig config_;
  std::vector<std::string> names_;
  std::unordered_map<std::string, TensorView> by_name_;
};

}  // namespace

std::string gguf_pre_tokenizer_regex(const std::string& pre) {
  // The Split regexes of Qwen2/3's and Llama 3's tokenizer.json (llama.cpp names the pre-tokenizer
  // instead of storing it; its own copies are rewritten for its regex engine).
  if (pre == "qwen2")
    return R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|)"
           R"( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3")  // llama.cpp's aliases
    return R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|)"
           R"( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  return {};
}

ModelConfig gguf_model_config(const GgufFile& f) {
  const std::string& src = f.path();
  auto arch_text = f.get_string("general.architecture");
  if (!arch_text) fail("{}: missing metadata 'general.architecture'", src);
  ModelConfig cfg;
  if (*arch_text == "llama") cfg.arch = Arch::Llama;
  else if (*arch_text == "qwen3") cfg.arch = Arch::Qwen3;
  else fail("{}: architecture '{}' is not supported (supported: llama, qwen3)", src, *arch_text);
  const std::string a = *arch_text + ".";

  cfg.max_position_embeddings = required_int(f, a + "context_length");
  cfg.hidden_size = required_int(f, a + "embedding_length");
  cfg.num_layers = required_int(f, a + "block_count");
  cfg.intermediate_size = required_int(f, a + "feed_forward_length");
  cfg.num_heads = required_int(f, a + "attention.head_count");
  cfg.num_kv_heads = f.get_int(a + "attention.head_count_kv").value_or(cfg.num_heads);
  auto eps = f.get_float(a + "attention.layer_norm_rms_epsilon");
  if (!eps) fail("{}: missing metadata '{}attention.layer_norm_rms_epsilon'", src, a);
  cfg.rms_norm_eps = *eps;
  cfg.rope_theta = f.get_float(a + "rope.freq_base").value_or(10000.0);
  if (cfg.num_heads <= 0) fail("{}: {}attention.head_count must be positive (got {})", src, a, cfg.num_heads);
  cfg.head_dim = f.get_int(a + "attention.key_length").value_or(cfg.hidden_size / cfg.num_heads);
  if (auto v = f.get_int(a + "attention.value_length"); v && *v != cfg.head_dim)
    fail("{}: {}attention.value_length ({}) differs from key_length ({}): not supported", src, a, *v, cfg.head_dim);
  if (auto v = f.get_int(a + "vocab_size")) {
    cfg.vocab_size = *v;
  } else {
    const GgufValue* tokens = f.get("tokenizer.ggml.tokens");
    if (!tokens || tokens->kind != GgufValue::Kind::Array)
      fail("{}: neither '{}vocab_size' nor 'tokenizer.ggml.tokens' gives the vocabulary size", src, a);
    cfg.vocab_size = int64_t(tokens->array_size());
  }
  if (auto scaling = f.get_string(a + "rope.scaling.type"); scaling && *scaling != "none")
    fail("{}: rope scaling '{}' ({}rope.scaling.type) is not supported", src, *scaling, a);

  cfg.rope_style = cfg.arch == Arch::Llama ? RopeStyle::Adjacent : RopeStyle::Halves;
  cfg.tie_word_embeddings = f.find("output.weight") == nullptr;
  cfg.bos_token_id = token_id(f, "tokenizer.ggml.bos_token_id");
  cfg.eos_token_ids = end_of_generation_ids(f);
  if (const TensorView* e = f.find("token_embd.weight")) {
    switch (e->dtype) {
      case DType::F32: cfg.torch_dtype = "float32"; break;
      case DType::F16: cfg.torch_dtype = "float16"; break;
      case DType::BF16: cfg.torch_dtype = "bfloat16"; break;
      default: cfg.torch_dtype = std::string(dtype_name(e->dtype));
    }
  }
  cfg.validate(src);

  // llama.cpp's form of Llama-3 rope scaling: one divisor per rotary frequency.
  if (const TensorView* freqs = f.find("rope_freqs.weight")) {
    if (freqs->shape.size() != 1 || freqs->shape[0] != cfg.head_dim / 2 || dtype_block_elems(freqs->dtype) != 1)
      fail("{}: rope_freqs.weight is {} {} but head_dim {} needs {} floats", src, dtype_name(freqs->dtype),
           shape_string(freqs->shape), cfg.head_dim, cfg.head_dim / 2);
    cfg.rope_freq_factors.resize(size_t(cfg.head_dim / 2));
    to_f32(freqs->dtype, freqs->data, cfg.rope_freq_factors.data(), cfg.head_dim / 2);
    for (float x : cfg.rope_freq_factors)
      if (!(x > 0) || !std::isfinite(x)) fail("{}: rope_freqs.weight holds {} (factors must be positive)", src, x);
  }
  return cfg;
}

TokenizerSpec gguf_tokenizer_spec(const GgufFile& f) {
  const std::string& src = f.path();
  TokenizerSpec spec;
  spec.source = src;
  auto model = f.get_string("tokenizer.ggml.model");
  if (!model) fail("{}: missing metadata 'tokenizer.ggml.model'", src);
  if (*model != "gpt2")
    fail("{}: tokenizer model '{}' is not supported (supported: gpt2, i.e. byte-level BPE)", src, *model);
  auto pre = f.get_string("tokenizer.ggml.pre");
  if (!pre) fail("{}: missing metadata 'tokenizer.ggml.pre' (re-convert with a current llama.cpp)", src);
  std::string regex = gguf_pre_tokenizer_regex(*pre);
  if (regex.empty())
    fail("{}: pre-tokenizer '{}' (tokenizer.ggml.pre) is not supported (supported: qwen2, llama-bpe)", src, *pre);
  spec.split_regexes = {regex};
  // As in the models' tokenizer.json: Qwen normalizes to NFC; Llama 3 takes whole-word vocab hits.
  spec.normalize_nfc = *pre == "qwen2";
  spec.ignore_merges = *pre != "qwen2";

  const GgufValue& tokens = required_array(f, "tokenizer.ggml.tokens", true);
  const size_t n = tokens.strings.size();
  if (n > size_t(INT32_MAX)) fail("{}: tokenizer.ggml.tokens has {} entries (too many)", src, n);
  std::vector<int> types(n, kNormal);
  if (f.get("tokenizer.ggml.token_type")) {
    const GgufValue& t = required_array(f, "tokenizer.ggml.token_type", false);
    if (t.numbers.size() != n)
      fail("{}: tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}", src, t.numbers.size(), n);
    for (size_t id = 0; id < n; ++id) {
      const double type = t.numbers[id];
      if (!(type >= 0 && type <= double(kByte)) || type != std::floor(type))
        fail("{}: tokenizer.ggml.token_type[{}] = {} is not a token type", src, id, type);
      types[id] = int(type);
    }
  }
  size_t vocab_end = 0;
  for (size_t id = 0; id < n; ++id) {
    if (types[id] == kControl || types[id] == kUserDefined) {
      if (tokens.strings[id].empty()) continue;
      AddedToken a;
      a.id = int32_t(id);
      a.content = tokens.strings[id];
      a.special = types[id] == kControl;
      spec.added_tokens.push_back(std::move(a));
    } else if (types[id] != kUnused) {
      vocab_end = id + 1;
    }
  }
  // Like tokenizer.json's model.vocab: byte-level entries only, added tokens and padding empty.
  spec.vocab.assign(vocab_end, std::string());
  for (size_t id = 0; id < vocab_end; ++id)
    if (types[id] != kControl && types[id] != kUserDefined && types[id] != kUnused) spec.vocab[id] = tokens.strings[id];

  const GgufValue& merges = required_array(f, "tokenizer.ggml.merges", true);
  spec.merges.reserve(merges.strings.size());
  for (size_t k = 0; k < merges.strings.size(); ++k) {
    const std::string& m = merges.strings[k];
    // Split at the first space after the first character, as llama.cpp does.
    size_t space = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
    if (space == std::string::npos) fail("{}: tokenizer.ggml.merges[{}] = \"{}\" is not \"left right\"", src, k, m);
    spec.merges.emplace_back(m.substr(0, space), m.substr(space + 1));
  }
  for (int64_t id : end_of_generation_ids(f)) spec.eos_ids.push_back(int32_t(id));
  return spec;
}

std::unique_ptr<ModelFiles> open_gguf_model(const std::string& path) { return std::make_unique<GgufModel>(path); }

}  // namespace shardlm
