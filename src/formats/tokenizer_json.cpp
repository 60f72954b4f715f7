// Hugging Face tokenizer.json (+ tokenizer_config.json, generation_config.json) -> TokenizerSpec.
// Only byte-level BPE is accepted (GPT-2, Llama-3, Qwen); anything else is refused with an Error
// that names the file and the unsupported kind, rather than tokenizing differently from HF.
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "formats/json_error.h"
#include "formats/tokenizer_spec.h"

namespace shardlm {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// Larger ids than any real vocabulary (the largest are ~260k); guards against a file that would
// make us allocate gigabytes for a handful of tokens.
constexpr int64_t kMaxTokenId = int64_t(1) << 24;
constexpr int kMaxSequenceDepth = 8;

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("{}: read failed", path);
  return ss.str();
}

json parse_json(const std::string& text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", source, json_error_text(e));
  }
}

// Field helpers: every type error names the file and the field path.
const json* find(const json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

bool get_bool(const json& obj, const char* key, bool fallback, const std::string& where) {
  const json* v = find(obj, key);
  if (!v) return fallback;
  if (!v->is_boolean()) fail("{}.{} must be true or false (got {})", where, key, v->type_name());
  return v->get<bool>();
}

std::string get_string(const json& obj, const char* key, const std::string& where) {
  const json* v = find(obj, key);
  if (!v) fail("{}: missing '{}'", where, key);
  if (!v->is_string()) fail("{}.{} must be a string (got {})", where, key, v->type_name());
  return v->get<std::string>();
}

std::string optional_string(const json& obj, const char* key, const std::string& where) {
  const json* v = find(obj, key);
  if (!v) return {};
  if (!v->is_string()) fail("{}.{} must be a string or null (got {})", where, key, v->type_name());
  return v->get<std::string>();
}

// A token id in [0, kMaxTokenId), or -1. Kept apart from the error so that reading 150k vocab
// entries formats no messages.
int64_t token_id_value(const json& v) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    return u < uint64_t(kMaxTokenId) ? int64_t(u) : -1;
  }
  if (!v.is_number_integer()) return -1;
  int64_t id = v.get<int64_t>();
  return id >= 0 && id < kMaxTokenId ? id : -1;
}

[[noreturn]] void bad_id(const json& v, const std::string& where) {
  if (!v.is_number_integer()) fail("{} must be an integer token id (got {})", where, v.type_name());
  fail("{}: token id {} is out of range", where, v.dump());
}

int64_t get_id(const json& v, const std::string& where) {
  int64_t id = token_id_value(v);
  if (id < 0) bad_id(v, where);
  return id;
}

const json& require_object(const json& obj, const char* key, const std::string& where) {
  const json* v = find(obj, key);
  if (!v) fail("{}: missing '{}'", where, key);
  if (!v->is_object()) fail("{}.{} must be an object (got {})", where, key, v->type_name());
  return *v;
}

std::string type_of(const json& obj, const std::string& where) {
  if (!obj.is_object()) fail("{} must be an object (got {})", where, obj.type_name());
  return get_string(obj, "type", where);
}

// A literal Split pattern becomes a regex that matches exactly that text.
std::string escape_regex(const std::string& literal) {
  std::string out;
  for (char c : literal) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u)) out += '\\';
    out += c;
  }
  return out;
}

void read_normalizer(const json& n, TokenizerSpec& spec, const std::string& where, int depth) {
  if (n.is_null()) return;
  std::string type = type_of(n, where);
  if (type == "NFC") {
    spec.normalize_nfc = true;
  } else if (type == "Sequence") {
    if (depth >= kMaxSequenceDepth) fail("{}: Sequence nested too deeply", where);
    const json* list = find(n, "normalizers");
    if (!list || !list->is_array()) fail("{}.normalizers must be a list", where);
    for (size_t i = 0; i < list->size(); ++i)
      read_normalizer((*list)[i], spec, fmt::format("{}.normalizers[{}]", where, i), depth + 1);
  } else {
    fail("{}: unsupported normalizer type '{}' (supported: NFC, Sequence of NFC)", where, type);
  }
}

struct PreTokenizerState {
  bool saw_byte_level = false;
};

void read_pre_tokenizer(const json& p, TokenizerSpec& spec, PreTokenizerState& st, const std::string& where,
                        int depth) {
  std::string type = type_of(p, where);
  if (type == "Sequence") {
    if (depth >= kMaxSequenceDepth) fail("{}: Sequence nested too deeply", where);
    const json* list = find(p, "pretokenizers");
    if (!list || !list->is_array()) fail("{}.pretokenizers must be a list", where);
    for (size_t i = 0; i < list->size(); ++i)
      read_pre_tokenizer((*list)[i], spec, st, fmt::format("{}.pretokenizers[{}]", where, i), depth + 1);
    return;
  }
  // The byte-level mapping must come last: a split after it would see the mapped alphabet.
  if (st.saw_byte_level) fail("{}: '{}' after ByteLevel is not supported", where, type);
  if (type == "ByteLevel") {
    st.saw_byte_level = true;
    spec.byte_level_add_prefix_space = get_bool(p, "add_prefix_space", true, where);
    spec.byte_level_use_regex = get_bool(p, "use_regex", true, where);
  } else if (type == "Split") {
    std::string behavior = get_string(p, "behavior", where);
    if (behavior != "Isolated")
      fail("{}: Split behavior '{}' is not supported (only Isolated)", where, behavior);
    if (get_bool(p, "invert", false, where)) fail("{}: Split with invert=true is not supported", where);
    const json& pattern = require_object(p, "pattern", where);
    if (const json* re = find(pattern, "Regex")) {
      if (!re->is_string()) fail("{}.pattern.Regex must be a string", where);
      spec.split_regexes.push_back(re->get<std::string>());
    } else if (const json* lit = find(pattern, "String")) {
      if (!lit->is_string()) fail("{}.pattern.String must be a string", where);
      spec.split_regexes.push_back(escape_regex(lit->get<std::string>()));
    } else {
      fail("{}.pattern must hold 'Regex' or 'String'", where);
    }
  } else {
    fail("{}: unsupported pre_tokenizer type '{}' (supported: Split, ByteLevel, Sequence)", where, type);
  }
}

void read_decoder(const json& d, const std::string& where, int depth) {
  if (d.is_null()) return;  // decoding is byte-level either way
  std::string type = type_of(d, where);
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    if (depth >= kMaxSequenceDepth) fail("{}: Sequence nested too deeply", where);
    const json* list = find(d, "decoders");
    if (!list || !list->is_array()) fail("{}.decoders must be a list", where);
    for (size_t i = 0; i < list->size(); ++i)
      read_decoder((*list)[i], fmt::format("{}.decoders[{}]", where, i), depth + 1);
    return;
  }
  fail("{}: unsupported decoder type '{}' (supported: ByteLevel)", where, type);
}

void read_merges(const json& merges, TokenizerSpec& spec, const std::string& where) {
  if (!merges.is_array()) fail("{} must be a list (got {})", where, merges.type_name());
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    if (m.is_array()) {
      if (m.size() != 2 || !m[0].is_string() || !m[1].is_string())
        fail("{}[{}] must be a pair of strings", where, i);
      spec.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else if (m.is_string()) {
      // Older files: "left right", split on the one space (tokens never hold a raw space).
      const std::string& line = m.get_ref<const std::string&>();
      if (line.rfind("#version", 0) == 0) continue;
      size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
        fail("{}[{}] = \"{}\" is not of the form \"left right\"", where, i, line);
      spec.merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    } else {
      fail("{}[{}] must be a pair of strings or a \"left right\" string (got {})", where, i, m.type_name());
    }
  }
}

void read_model(const json& model, TokenizerSpec& spec, const std::string& where) {
  if (const json* t = find(model, "type")) {
    if (!t->is_string()) fail("{}.type must be a string", where);
    if (t->get<std::string>() != "BPE")
      fail("{}: unsupported model type '{}' (supported: BPE)", where, t->get<std::string>());
  }
  if (const json* d = find(model, "dropout")) {
    if (!d->is_number()) fail("{}.dropout must be a number or null", where);
    double p = d->get<double>();
    if (!(p >= 0.0 && p <= 1.0)) fail("{}.dropout must be between 0 and 1 (got {})", where, p);
    if (p > 0.0) fail("{}: BPE dropout {} is not supported (it makes encoding random)", where, p);
  }
  if (!optional_string(model, "continuing_subword_prefix", where).empty())
    fail("{}: continuing_subword_prefix is not supported (not a byte-level BPE)", where);
  if (!optional_string(model, "end_of_word_suffix", where).empty())
    fail("{}: end_of_word_suffix is not supported (not a byte-level BPE)", where);
  if (get_bool(model, "byte_fallback", false, where))
    fail("{}: byte_fallback is not supported (a SentencePiece-style vocabulary, not byte-level)", where);
  spec.ignore_merges = get_bool(model, "ignore_merges", false, where);
  spec.fuse_unk = get_bool(model, "fuse_unk", false, where);
  spec.unk_token = optional_string(model, "unk_token", where);

  const json& vocab = require_object(model, "vocab", where);
  const json* merges = find(model, "merges");
  if (!merges) fail("{}: missing 'merges'", where);

  int64_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    int64_t id = token_id_value(it.value());
    if (id < 0) bad_id(it.value(), fmt::format("{}.vocab[\"{}\"]", where, it.key()));
    max_id = std::max(max_id, id);
  }
  // Real vocabularies are dense; a sparse one would only waste memory on empty slots.
  if (max_id >= int64_t(vocab.size()) * 2 + 4096)
    fail("{}.vocab: ids are too sparse ({} tokens, largest id {})", where, vocab.size(), max_id);
  spec.vocab.assign(size_t(max_id + 1), std::string());
  std::vector<bool> taken(spec.vocab.size(), false);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    size_t id = size_t(it.value().get<int64_t>());
    if (taken[id]) fail("{}.vocab: id {} is given to both \"{}\" and \"{}\"", where, id, spec.vocab[id], it.key());
    taken[id] = true;
    spec.vocab[id] = it.key();
  }
  read_merges(*merges, spec, where + ".merges");
}

void read_added_tokens(const json& list, TokenizerSpec& spec, const std::string& where) {
  if (!list.is_array()) fail("{} must be a list (got {})", where, list.type_name());
  std::unordered_map<std::string, int32_t> vocab_ids;
  for (size_t id = 0; id < spec.vocab.size(); ++id)
    if (!spec.vocab[id].empty()) vocab_ids.emplace(spec.vocab[id], int32_t(id));
  std::unordered_map<int64_t, std::string> content_of_id;
  for (size_t i = 0; i < list.size(); ++i) {
    std::string at = fmt::format("{}[{}]", where, i);
    const json& t = list[i];
    if (!t.is_object()) fail("{} must be an object (got {})", at, t.type_name());
    AddedToken a;
    const json* id = find(t, "id");
    if (!id) fail("{}: missing 'id'", at);
    int64_t file_id = get_id(*id, at + ".id");
    a.content = get_string(t, "content", at);
    if (a.content.empty()) continue;  // HF ignores empty added tokens
    a.special = get_bool(t, "special", false, at);
    a.lstrip = get_bool(t, "lstrip", false, at);
    a.rstrip = get_bool(t, "rstrip", false, at);
    a.single_word = get_bool(t, "single_word", false, at);
    a.normalized = get_bool(t, "normalized", !a.special, at);
    // HF gives an added token that is also a vocab entry the vocab's id.
    auto in_vocab = vocab_ids.find(a.content);
    a.id = in_vocab != vocab_ids.end() ? in_vocab->second : int32_t(file_id);
    auto [slot, fresh] = content_of_id.emplace(a.id, a.content);
    if (!fresh && slot->second != a.content)
      fail("{}: id {} is given to both \"{}\" and \"{}\"", at, a.id, slot->second, a.content);
    spec.added_tokens.push_back(std::move(a));
  }
}

std::optional<int32_t> find_token_id(const TokenizerSpec& spec, const std::string& text) {
  for (const auto& a : spec.added_tokens)
    if (a.content == text) return a.id;
  for (size_t id = 0; id < spec.vocab.size(); ++id)
    if (!spec.vocab[id].empty() && spec.vocab[id] == text) return int32_t(id);
  return std::nullopt;
}

void add_eos(TokenizerSpec& spec, int64_t id) {
  if (id < 0 || id > INT32_MAX) return;
  for (int32_t e : spec.eos_ids)
    if (e == id) return;
  spec.eos_ids.push_back(int32_t(id));
}

// tokenizer_config.json: eos_token is a string or {"content": ...}.
void read_tokenizer_config(const std::string& path, TokenizerSpec& spec) {
  json cfg = parse_json(read_text_file(path), path);
  if (!cfg.is_object()) fail("{}: must hold a JSON object", path);
  const json* eos = find(cfg, "eos_token");
  if (!eos) return;
  std::string text;
  if (eos->is_string()) text = eos->get<std::string>();
  else if (eos->is_object()) text = get_string(*eos, "content", path + ": eos_token");
  else fail("{}: eos_token must be a string or an object (got {})", path, eos->type_name());
  if (auto id = find_token_id(spec, text)) add_eos(spec, *id);
}

// generation_config.json: eos_token_id is an integer or a list (Qwen3 chat models stop at two).
void read_generation_config(const std::string& path, TokenizerSpec& spec) {
  json cfg = parse_json(read_text_file(path), path);
  if (!cfg.is_object()) fail("{}: must hold a JSON object", path);
  const json* eos = find(cfg, "eos_token_id");
  if (!eos) return;
  if (eos->is_number_integer()) {
    add_eos(spec, eos->get<int64_t>());
  } else if (eos->is_array()) {
    for (const json& v : *eos) {
      if (!v.is_number_integer()) fail("{}: eos_token_id must hold integers", path);
      add_eos(spec, v.get<int64_t>());
    }
  } else {
    fail("{}: eos_token_id must be an integer or a list (got {})", path, eos->type_name());
  }
}

}  // namespace

TokenizerSpec parse_tokenizer_json(const std::string& json_text, const std::string& source) {
  json root = parse_json(json_text, source);
  if (!root.is_object()) fail("{}: must hold a JSON object (got {})", source, root.type_name());
  TokenizerSpec spec;
  spec.source = source;

  const json* model = find(root, "model");
  if (!model) fail("{}: missing 'model'", source);
  if (!model->is_object()) fail("{}: 'model' must be an object (got {})", source, model->type_name());
  read_model(*model, spec, source + ": model");

  if (const json* n = find(root, "normalizer")) read_normalizer(*n, spec, source + ": normalizer", 0);

  const json* pre = find(root, "pre_tokenizer");
  if (!pre) fail("{}: no pre_tokenizer: only byte-level BPE tokenizers are supported", source);
  PreTokenizerState st;
  read_pre_tokenizer(*pre, spec, st, source + ": pre_tokenizer", 0);
  if (!st.saw_byte_level)
    fail("{}: pre_tokenizer has no ByteLevel step: only byte-level BPE tokenizers are supported", source);
  if (const json* d = find(root, "decoder")) read_decoder(*d, source + ": decoder", 0);
  if (const json* a = find(root, "added_tokens")) read_added_tokens(*a, spec, source + ": added_tokens");
  return spec;
}

TokenizerSpec load_tokenizer_json(const std::string& dir_or_file) {
  fs::path path(dir_or_file);
  std::error_code ec;
  if (fs::is_directory(path, ec)) path /= "tokenizer.json";
  TokenizerSpec spec = parse_tokenizer_json(read_text_file(path.string()), path.string());
  fs::path dir = path.parent_path();
  for (const char* name : {"tokenizer_config.json", "generation_config.json"}) {
    fs::path extra = dir / name;
    if (!fs::exists(extra, ec)) continue;
    if (name[0] == 't') read_tokenizer_config(extra.string(), spec);
    else read_generation_config(extra.string(), spec);
  }
  return spec;
}

}  // namespace shardlm
