// Everything needed to build a byte-level BPE tokenizer, whichever file it came from:
// a Hugging Face tokenizer.json or a GGUF file's tokenizer.ggml.* metadata.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace shardlm {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = true;
  bool lstrip = false, rstrip = false, single_word = false, normalized = false;
};

struct TokenizerSpec {
  // vocab[id] = token string in byte-level form (GPT-2 byte-to-unicode alphabet); ids without
  // a token are empty. Added tokens are not in here.
  std::vector<std::string> vocab;
  // Merges in rank order: (left, right) token strings.
  std::vector<std::pair<std::string, std::string>> merges;
  // Pre-tokenizer split regexes applied in sequence (behaviour "Isolated"); empty = none.
  std::vector<std::string> split_regexes;
  bool byte_level_add_prefix_space = false;
  bool normalize_nfc = false;
  std::vector<AddedToken> added_tokens;
  std::vector<int32_t> eos_ids;  // from tokenizer_config.json / GGUF, may be empty
  std::string source;            // file it came from, for error messages

  // The ByteLevel pre-tokenizer step runs after split_regexes, on each piece: it prepends a space
  // (byte_level_add_prefix_space, when the piece does not start with one), then, when
  // byte_level_use_regex, splits the piece with GPT-2's regex (the tokenizer.json default).
  bool byte_level_use_regex = false;
  // BPE: a whole piece that is itself a vocab entry becomes that token without merging (Llama-3).
  bool ignore_merges = false;
  // BPE: token for characters missing from the vocab (never needed when all 256 byte
  // characters are in it); empty = such characters are dropped, as Hugging Face does.
  std::string unk_token;
  bool fuse_unk = false;  // consecutive unknown characters become one unk_token
};

// Reads <dir>/tokenizer.json (or the file given), and eos_ids from tokenizer_config.json's
// eos_token plus generation_config.json's eos_token_id when those sit beside it. Throws Error
// naming the file on anything it does not support (model type other than BPE, unknown
// pre-tokenizer...). Ids are those Hugging Face `tokenizers` uses.
TokenizerSpec load_tokenizer_json(const std::string& dir_or_file);
TokenizerSpec parse_tokenizer_json(const std::string& json_text, const std::string& source);

}  // namespace shardlm
