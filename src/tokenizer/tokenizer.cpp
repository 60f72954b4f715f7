#include "tokenizer/tokenizer.h"

#include <unordered_map>

#include "core/error.h"
#include "tokenizer/added_token_matcher.h"
#include "tokenizer/bpe.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/split_regex.h"
#include "tokenizer/unicode_text.h"

namespace shardlm {

namespace {
constexpr int64_t kMaxTokenId = int64_t(1) << 24;

// HF's ByteLevel decoder, per token: the bytes its characters stand for when every character is
// in the byte-level alphabet, else the token's own UTF-8 (how "<|im_end|>" comes back).
std::string decoded_bytes(const std::string& token) {
  std::string bytes;
  return byte_level_to_bytes(token, &bytes) ? bytes : token;
}
}  // namespace

struct Tokenizer::Impl {
  explicit Impl(TokenizerSpec s);

  void encode_text(std::string_view text, bool parse_special, std::vector<int32_t>& ids) const;
  void split_level(std::string_view text, size_t level, std::vector<int32_t>& ids) const;
  void byte_level_step(std::string_view piece, std::vector<int32_t>& ids) const;

  TokenizerSpec spec;
  BpeModel bpe;
  std::vector<SplitRegex> splits;
  std::unique_ptr<SplitRegex> byte_level_split;  // GPT-2's regex, when the ByteLevel step has use_regex
  // Two passes, as in HF: tokens with normalized = false are found in the raw text, the others
  // in the normalized text of what is left.
  AddedTokenMatcher raw_tokens, normalized_tokens;
  std::unordered_map<std::string, int32_t> added_ids;  // content -> id
  std::vector<std::string> bytes_of;                   // id -> decoded bytes
  std::vector<bool> known;                             // id -> has a token
};

Tokenizer::Impl::Impl(TokenizerSpec s) : spec(std::move(s)), bpe(spec) {
  for (const std::string& pattern : spec.split_regexes) splits.emplace_back(pattern, spec.source);
  if (spec.byte_level_use_regex) byte_level_split = std::make_unique<SplitRegex>(kGpt2SplitPattern, spec.source);

  int64_t size = int64_t(spec.vocab.size());
  for (const AddedToken& a : spec.added_tokens) {
    if (a.id < 0 || a.id >= kMaxTokenId) fail("{}: added token \"{}\" has id {} out of range", spec.source, a.content, a.id);
    size = std::max<int64_t>(size, int64_t(a.id) + 1);
  }
  bytes_of.assign(size_t(size), std::string());
  known.assign(size_t(size), false);
  for (size_t id = 0; id < spec.vocab.size(); ++id) {
    if (spec.vocab[id].empty()) continue;
    bytes_of[id] = decoded_bytes(spec.vocab[id]);
    known[id] = true;
  }

  std::vector<AddedTokenPattern> raw, normalized;
  for (const AddedToken& a : spec.added_tokens) {
    if (a.content.empty()) continue;
    AddedTokenPattern p{a.content, a.id, a.special, a.lstrip, a.rstrip, a.single_word};
    // HF decodes a normalized added token as its normalized form.
    if (a.normalized && spec.normalize_nfc) p.text = nfc(a.content);
    bytes_of[size_t(a.id)] = decoded_bytes(p.text);
    known[size_t(a.id)] = true;
    added_ids[a.content] = a.id;
    (a.normalized ? normalized : raw).push_back(std::move(p));
  }
  raw_tokens = AddedTokenMatcher(std::move(raw));
  normalized_tokens = AddedTokenMatcher(std::move(normalized));
  // Everything needed now lives in bpe and the tables above; drop the ~10 MB of strings.
  spec.vocab = {};
  spec.merges = {};
}

void Tokenizer::Impl::byte_level_step(std::string_view piece, std::vector<int32_t>& ids) const {
  std::string prefixed;
  if (spec.byte_level_add_prefix_space && piece.front() != ' ') {
    prefixed.reserve(piece.size() + 1);
    prefixed.append(1, ' ').append(piece);
    piece = prefixed;
  }
  if (!byte_level_split) {
    bpe.encode_piece(piece, ids);
    return;
  }
  byte_level_split->split(piece, [&](size_t b, size_t e) { bpe.encode_piece(piece.substr(b, e - b), ids); });
}

void Tokenizer::Impl::split_level(std::string_view text, size_t level, std::vector<int32_t>& ids) const {
  if (text.empty()) return;
  if (level == splits.size()) {
    byte_level_step(text, ids);
    return;
  }
  // Each piece is matched on its own, as HF does: lookarounds do not see past its ends.
  splits[level].split(text, [&](size_t b, size_t e) { split_level(text.substr(b, e - b), level + 1, ids); });
}

void Tokenizer::Impl::encode_text(std::string_view text, bool parse_special, std::vector<int32_t>& ids) const {
  std::vector<Segment> outer, inner;
  if (raw_tokens.empty()) outer.push_back({0, text.size(), -1});
  else raw_tokens.split(text, !parse_special, outer);
  for (const Segment& seg : outer) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    std::string_view part = text.substr(seg.begin, seg.end - seg.begin);
    if (part.empty()) continue;
    std::string normalized_storage;
    if (spec.normalize_nfc) {
      normalized_storage = nfc(part);
      part = normalized_storage;
    }
    if (normalized_tokens.empty()) {
      split_level(part, 0, ids);
      continue;
    }
    inner.clear();
    normalized_tokens.split(part, !parse_special, inner);
    for (const Segment& s : inner) {
      if (s.id >= 0) ids.push_back(s.id);
      else split_level(part.substr(s.begin, s.end - s.begin), 0, ids);
    }
  }
}

Tokenizer::Tokenizer(TokenizerSpec spec) : impl_(std::make_unique<Impl>(std::move(spec))) {}
Tokenizer Tokenizer::from_dir(const std::string& dir) { return Tokenizer(load_tokenizer_json(dir)); }
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  impl_->encode_text(text, parse_special, ids);
  return ids;
}

// Ids without a token (a model's vocabulary is often padded past the tokenizer's) decode to
// nothing, as Hugging Face's decode skips them; negative ids are an error.
std::string Tokenizer::token_bytes(int32_t id) const {
  if (id < 0) fail("{}: token id {} is negative", impl_->spec.source, id);
  if (size_t(id) >= impl_->known.size() || !impl_->known[size_t(id)]) return {};
  return impl_->bytes_of[size_t(id)];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) out += token_bytes(id);
  return out;
}

int64_t Tokenizer::vocab_size() const { return int64_t(impl_->known.size()); }

std::optional<int32_t> Tokenizer::token_id(std::string_view token_text) const {
  auto it = impl_->added_ids.find(std::string(token_text));
  if (it != impl_->added_ids.end()) return it->second;
  if (auto id = impl_->bpe.vocab_id(token_text)) return id;
  return impl_->bpe.vocab_id(bytes_to_byte_level(token_text));
}

const std::vector<int32_t>& Tokenizer::eos_ids() const { return impl_->spec.eos_ids; }

}  // namespace shardlm
