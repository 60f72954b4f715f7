// Any ModelFiles -> a GGUF file laid out as llama.cpp's convert_hf_to_gguf.py writes it for the
// llama and qwen3 architectures: same metadata keys and tokenizer encoding, Q/K rows permuted for
// "llama", Llama-3 rope scaling as a rope_freqs tensor. Tensors are converted and written one
// slice at a time, so memory stays small whatever the model size.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <unordered_set>

#include "core/error.h"
#include "core/log.h"
#include "formats/gguf.h"
#include "formats/model_files.h"

namespace shardlm {

namespace {

// llama.cpp token types and file types.
enum TokenType : int32_t { kNormal = 1, kControl = 3, kUserDefined = 4, kUnused = 5 };
uint32_t llama_file_type(DType t) {
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q8_0: return 7;
    case DType::BF16: return 32;
  }
  return 0;
}

bool starts_with(const std::string& s, std::string_view p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string& s, std::string_view p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// convert_hf_to_gguf.py's does_token_look_special: added tokens that llama.cpp should treat as
// control tokens even when the tokenizer does not mark them special.
bool looks_special(const std::string& t) {
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" ||
         (starts_with(t, "<|") && ends_with(t, "|>")) ||
         (starts_with(t, "<\xef\xbd\x9c") && ends_with(t, "\xef\xbd\x9c>")) ||  // fullwidth bars (DeepSeek)
         (starts_with(t, "<unused") && ends_with(t, ">"));
}

std::string replace_all(std::string s, std::string_view from, std::string_view to) {
  for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) s.replace(p, from.size(), to);
  return s;
}

void add_tokenizer(GgufWriter& w, const TokenizerSpec& spec, const ModelConfig& c) {
  std::string pre;
  for (const char* name : {"qwen2", "llama-bpe"})
    if (spec.split_regexes == std::vector<std::string>{gguf_pre_tokenizer_regex(name)}) pre = name;
  if (pre.empty() || spec.byte_level_add_prefix_space || spec.byte_level_use_regex)
    fail("{}: this tokenizer's pre-tokenizer has no llama.cpp name (GGUF supports Qwen2/3's and Llama 3's here)",
         spec.source);
  // llama.cpp derives these from the name alone; a tokenizer that differs would encode differently.
  const bool qwen = pre == "qwen2";
  if (spec.normalize_nfc != qwen || spec.ignore_merges == qwen || !spec.unk_token.empty())
    fail("{}: tokenizer has the {} pre-tokenizer but {}NFC normalization, {}ignore_merges{}: llama.cpp could not "
         "reproduce it",
         spec.source, pre, spec.normalize_nfc ? "" : "no ", spec.ignore_merges ? "" : "no ",
         spec.unk_token.empty() ? "" : " and an unk_token");

  const int64_t n = c.vocab_size;
  std::vector<std::string> tokens(static_cast<size_t>(n));
  std::vector<int32_t> types(size_t(n), kUnused);
  std::vector<bool> set(size_t(n), false);
  for (size_t id = 0; id < spec.vocab.size(); ++id) {
    if (spec.vocab[id].empty()) continue;
    if (int64_t(id) >= n)
      fail("{}: token {} (\"{}\") lies beyond the model's vocab_size {}", spec.source, id, spec.vocab[id], n);
    tokens[id] = spec.vocab[id], types[id] = kNormal, set[id] = true;
  }
  for (const auto& a : spec.added_tokens) {
    if (a.id < 0 || a.id >= n)
      fail("{}: added token {} (\"{}\") lies beyond the model's vocab_size {}", spec.source, a.id, a.content, n);
    if (a.special || looks_special(a.content)) {
      tokens[size_t(a.id)] = a.content, types[size_t(a.id)] = kControl;
    } else {
      // llama.cpp matches user-defined tokens in raw text, so SentencePiece's "▁" becomes a space.
      tokens[size_t(a.id)] = replace_all(a.content, "\xe2\x96\x81", " "), types[size_t(a.id)] = kUserDefined;
    }
    set[size_t(a.id)] = true;
  }
  for (int64_t id = 0; id < n; ++id)
    if (!set[size_t(id)]) tokens[size_t(id)] = fmt::format("[PAD{}]", id);

  std::vector<std::string> merges;
  merges.reserve(spec.merges.size());
  for (const auto& [l, r] : spec.merges) merges.push_back(l + " " + r);

  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", pre);
  w.add_string_array("tokenizer.ggml.tokens", std::move(tokens));
  w.add_int32_array("tokenizer.ggml.token_type", types);
  w.add_string_array("tokenizer.ggml.merges", std::move(merges));
  if (c.bos_token_id && *c.bos_token_id >= 0 && *c.bos_token_id < n)
    w.add_uint32("tokenizer.ggml.bos_token_id", uint32_t(*c.bos_token_id));
  // The tokenizer's own eos first (tokenizer_config.json), then config.json's, as llama.cpp does.
  std::optional<int64_t> eos;
  if (!spec.eos_ids.empty()) eos = spec.eos_ids[0];
  else if (!c.eos_token_ids.empty()) eos = c.eos_token_ids[0];
  if (eos && *eos >= 0 && *eos < n) w.add_uint32("tokenizer.ggml.eos_token_id", uint32_t(*eos));
}

void add_hparams(GgufWriter& w, const ModelConfig& c, DType dtype) {
  const std::string a = std::string(arch_name(c.arch)) + ".";
  w.add_uint32(a + "block_count", uint32_t(c.num_layers));
  w.add_uint32(a + "context_length", uint32_t(c.max_position_embeddings));
  w.add_uint32(a + "embedding_length", uint32_t(c.hidden_size));
  w.add_uint32(a + "feed_forward_length", uint32_t(c.intermediate_size));
  w.add_uint32(a + "attention.head_count", uint32_t(c.num_heads));
  w.add_uint32(a + "attention.head_count_kv", uint32_t(c.num_kv_heads));
  w.add_float32(a + "rope.freq_base", float(c.rope_theta));
  w.add_float32(a + "attention.layer_norm_rms_epsilon", float(c.rms_norm_eps));
  w.add_uint32(a + "attention.key_length", uint32_t(c.head_dim));
  w.add_uint32(a + "attention.value_length", uint32_t(c.head_dim));
  w.add_uint32("general.file_type", llama_file_type(dtype));
  if (c.arch == Arch::Llama) {
    w.add_uint32(a + "vocab_size", uint32_t(c.vocab_size));
    w.add_uint32(a + "rope.dimension_count", uint32_t(c.head_dim));
  }
}

// convert_hf_to_gguf.py's Llama-3 rope_freqs: a divisor per frequency (1 for short wavelengths,
// `factor` for long ones, a smooth blend between). Computed in f32 step by step as torch does
// there (x / t is reciprocal(t) * x in torch), so the factors match its file to within an ulp.
std::vector<float> llama3_rope_factors(const ModelConfig& c) {
  const RopeScaling& s = c.rope_scaling;
  const double old_ctx = double(s.original_max_position_embeddings);
  const double low_wavelen = old_ctx / s.low_freq_factor, high_wavelen = old_ctx / s.high_freq_factor;
  std::vector<float> factors;
  for (int64_t i = 0; i < c.head_dim; i += 2) {
    const float exponent = float(i) / float(c.head_dim);
    const float freq = 1.0f / float(std::pow(double(float(c.rope_theta)), double(exponent)));
    const float wavelen = (1.0f / freq) * float(2 * M_PI);
    if (wavelen < high_wavelen) {
      factors.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      factors.push_back(float(s.factor));
    } else {
      const float band = float(s.high_freq_factor - s.low_freq_factor);
      const float smooth = ((1.0f / wavelen) * float(old_ctx) - float(s.low_freq_factor)) / band;
      factors.push_back(1.0f / ((1.0f - smooth) / float(s.factor) + smooth));
    }
  }
  return factors;
}

// Where a tensor goes in the file: embedding, layers in order, final norm, head (llama.cpp's order
// is its source files'; any order is valid GGUF, this one keeps a layer's bytes together).
std::pair<int, int64_t> order_key(const std::string& gguf) {
  if (gguf == "rope_freqs.weight") return {0, 0};
  if (gguf == "token_embd.weight") return {1, 0};
  if (starts_with(gguf, "blk.")) return {2, std::stoll(gguf.substr(4))};
  if (gguf == "output_norm.weight") return {3, 0};
  return {4, 0};
}

struct Plan {
  std::string hf, gguf;
  const TensorView* src;
  DType dtype;
  int64_t permute_heads = 0;  // Q/K: heads whose rows are reordered (0: rows kept)
  bool to_adjacent = true;    // direction of the reordering
};

}  // namespace

int64_t gguf_row_from_hf_row(int64_t hf_row, int64_t head_dim) {
  const int64_t half = head_dim / 2, head = hf_row / head_dim, r = hf_row % head_dim;
  return head * head_dim + 2 * (r % half) + r / half;
}

int64_t hf_row_from_gguf_row(int64_t gguf_row, int64_t head_dim) {
  const int64_t half = head_dim / 2, head = gguf_row / head_dim, r = gguf_row % head_dim;
  return head * head_dim + (r % 2) * half + r / 2;
}

void write_gguf_model(const ModelFiles& src, const std::string& out_path, DType dtype) {
  const ModelConfig& c = src.config();
  const std::string source = src.description();
  const TokenizerSpec spec = src.tokenizer();
  const std::string arch = arch_name(c.arch);

  // llama.cpp runs "llama" with adjacent rotary pairs and "qwen3" with halves: Q/K rows are
  // reordered whenever the source's layout differs from the target's.
  const RopeStyle target_style = c.arch == Arch::Llama ? RopeStyle::Adjacent : RopeStyle::Halves;
  const bool reorder = c.rope_style != target_style;

  std::vector<float> rope_factors = c.rope_freq_factors;
  if (rope_factors.empty() && c.rope_scaling.type == "llama3") rope_factors = llama3_rope_factors(c);
  else if (rope_factors.empty() && c.rope_scaling.type != "default")
    fail("{}: rope scaling '{}' cannot be written to GGUF here", source, c.rope_scaling.type);
  if (!rope_factors.empty() && c.arch != Arch::Llama)
    fail("{}: per-frequency rope factors are only written for arch llama", source);

  std::vector<Plan> plans;
  std::unordered_set<std::string> seen;
  for (const std::string& hf : src.tensor_names()) {
    if (ends_with(hf, ".rotary_emb.inv_freq")) continue;  // recomputed from the config, as llama.cpp does
    if (hf == "lm_head.weight" && c.tie_word_embeddings) continue;  // tied: llama.cpp reuses the embedding
    Plan p;
    p.hf = hf;
    p.gguf = gguf_name_from_hf(hf);
    if (p.gguf.empty()) fail("{}: tensor '{}' has no GGUF counterpart for arch {}", source, hf, arch);
    if (!seen.insert(p.gguf).second) continue;
    p.src = src.find(hf);
    if (!p.src) fail("{}: tensor '{}' is listed but cannot be found", source, hf);
    const int64_t cols = p.src->cols();
    if (p.src->shape.size() <= 1) {
      p.dtype = DType::F32;  // norms: llama.cpp keeps every 1-D tensor in f32
    } else if (dtype_block_elems(dtype) > 1 && cols % kQuantBlock != 0) {
      p.dtype = DType::F16;
      log_info("convert: {} has {} columns (not a multiple of 32): written as f16 instead of {}", hf, cols,
               dtype_name(dtype));
    } else {
      p.dtype = dtype;
    }
    if (reorder && (ends_with(hf, ".self_attn.q_proj.weight") || ends_with(hf, ".self_attn.k_proj.weight"))) {
      p.permute_heads = ends_with(hf, "q_proj.weight") ? c.num_heads : c.num_kv_heads;
      p.to_adjacent = target_style == RopeStyle::Adjacent;
      if (p.src->shape.size() != 2 || p.src->shape[0] != p.permute_heads * c.head_dim)
        fail("{}: tensor '{}' has shape {} but {} heads of {} rows are expected", source, hf,
             shape_string(p.src->shape), p.permute_heads, c.head_dim);
    }
    plans.push_back(std::move(p));
  }
  if (!c.tie_word_embeddings && !seen.count("output.weight"))
    fail("{}: no lm_head.weight and the config does not tie it to the embedding", source);
  std::stable_sort(plans.begin(), plans.end(),
                   [](const Plan& a, const Plan& b) { return order_key(a.gguf) < order_key(b.gguf); });

  GgufWriter w;
  w.add_string("general.architecture", arch);
  w.add_string("general.type", "model");
  w.add_string("general.name", std::filesystem::path(out_path).stem().string());
  add_hparams(w, c, dtype);
  add_tokenizer(w, spec, c);
  w.add_uint32("general.quantization_version", 2);

  if (!rope_factors.empty())
    w.tensors.push_back({"rope_freqs.weight", DType::F32, {int64_t(rope_factors.size())}, rope_factors.data(), {}});
  for (const Plan& p : plans) {
    GgufTensorToWrite t;
    t.name = p.gguf;
    t.dtype = p.dtype;
    t.shape = p.src->shape;
    t.fill_rows = [&p, head_dim = c.head_dim](int64_t begin, int64_t end, uint8_t* dst) {
      const TensorView& s = *p.src;
      const int64_t cols = s.cols();
      const int64_t src_row_bytes = dtype_bytes(s.dtype, cols), dst_row_bytes = dtype_bytes(p.dtype, cols);
      std::vector<float> row(static_cast<size_t>(cols));
      for (int64_t r = begin; r < end; ++r) {
        // Output row r of a reordered Q/K comes from the source row that the target layout puts there.
        int64_t from = r;
        if (p.permute_heads)
          from = p.to_adjacent ? hf_row_from_gguf_row(r, head_dim) : gguf_row_from_hf_row(r, head_dim);
        to_f32(s.dtype, s.bytes() + from * src_row_bytes, row.data(), cols);
        from_f32(p.dtype, row.data(), dst + (r - begin) * dst_row_bytes, cols);
      }
    };
    w.tensors.push_back(std::move(t));
  }

  int last_tenth = 0;
  w.progress = [&](uint64_t done, uint64_t total) {
    int tenth = total ? int(done * 10 / total) : 10;
    if (total >= (16u << 20) && tenth > last_tenth) {  // small files finish before anyone would look
      last_tenth = tenth;
      log_info("convert: {}% ({:.0f} of {:.0f} MiB)", tenth * 10, double(done) / (1 << 20), double(total) / (1 << 20));
    }
  };
  log_info("convert: {} -> {} ({} tensors, weights {})", source, out_path, w.tensors.size(), dtype_name(dtype));
  w.write(out_path);
}

}  // namespace shardlm
