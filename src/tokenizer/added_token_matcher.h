// Finds added tokens (<|im_start|>, <think>, ...) in text the way Hugging Face's AddedVocabulary
// does: leftmost-longest, non-overlapping, then the single_word / lstrip / rstrip rules.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace shardlm {

struct AddedTokenPattern {
  std::string text;  // what is matched (the content, or its normalized form)
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false;
};

// A slice of the input: an added token (id >= 0) or text still to be tokenized (id = -1).
struct Segment {
  size_t begin = 0, end = 0;
  int32_t id = -1;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(std::vector<AddedTokenPattern> patterns);
  bool empty() const { return patterns_.empty(); }

  // Appends the segments of text to out. With skip_special, special tokens are found but left
  // in the text (HF's encode_special_tokens), so they are tokenized as plain text.
  void split(std::string_view text, bool skip_special, std::vector<Segment>& out) const;

 private:
  // Longest pattern starting at text[pos], or -1.
  int32_t longest_at(std::string_view text, size_t pos, size_t* length) const;

  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> next;  // sorted by byte
    int32_t pattern = -1;                           // index into patterns_ ending here
  };
  std::vector<Node> trie_;
  std::vector<AddedTokenPattern> patterns_;
  bool first_byte_[256] = {};
};

}  // namespace shardlm
