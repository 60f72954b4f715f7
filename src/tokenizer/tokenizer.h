// Byte-level BPE tokenizer (GPT-2 / Llama-3 / Qwen style) that gives exactly the ids of Hugging
// Face `tokenizers` (encode(text, add_special_tokens=False)): added tokens split out first, NFC
// on the rest, the Split regexes, the byte-level alphabet, then BPE by merge rank.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/tokenizer_spec.h"

namespace shardlm {

class Tokenizer {
 public:
  // Throws Error naming spec.source on an inconsistent spec (merge of unknown tokens, bad regex).
  explicit Tokenizer(TokenizerSpec spec);
  // load_tokenizer_json(dir) + build.
  static Tokenizer from_dir(const std::string& dir);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // With parse_special = false, special added tokens (<|im_start|>...) are encoded as plain text;
  // non-special added tokens (<think>...) are still recognised, as in HF. Never throws on any
  // input bytes: invalid UTF-8 goes through the byte-level alphabet unchanged.
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const;
  // The exact bytes the ids stand for (HF then replaces invalid UTF-8 with U+FFFD; we do not, so
  // that a stream of token_bytes() concatenates to decode()). Throws Error naming an unknown id.
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string token_bytes(int32_t id) const;
  int64_t vocab_size() const;  // largest id + 1
  // HF's token_to_id: an added token's content, or a vocab entry in byte-level form ("Ġthe");
  // failing both, the vocab entry whose bytes are token_text (" the").
  std::optional<int32_t> token_id(std::string_view token_text) const;
  const std::vector<int32_t>& eos_ids() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardlm
