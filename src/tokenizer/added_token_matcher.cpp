#include "tokenizer/added_token_matcher.h"

#include <algorithm>

#include "tokenizer/unicode_text.h"

namespace shardlm {

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedTokenPattern> patterns) : patterns_(std::move(patterns)) {
  trie_.emplace_back();
  for (size_t p = 0; p < patterns_.size(); ++p) {
    const std::string& text = patterns_[p].text;
    if (text.empty()) continue;
    first_byte_[static_cast<uint8_t>(text[0])] = true;
    int32_t node = 0;
    for (char ch : text) {
      uint8_t b = static_cast<uint8_t>(ch);
      auto& next = trie_[size_t(node)].next;
      auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(b, int32_t(-1)),
                                 [](const auto& x, const auto& y) { return x.first < y.first; });
      if (it != next.end() && it->first == b) {
        node = it->second;
      } else {
        int32_t child = int32_t(trie_.size());
        next.insert(it, {b, child});
        trie_.emplace_back();  // invalidates `next`; not used after this
        node = child;
      }
    }
    // The same text twice: the later entry wins, as in HF's map from content to token.
    trie_[size_t(node)].pattern = int32_t(p);
  }
}

int32_t AddedTokenMatcher::longest_at(std::string_view text, size_t pos, size_t* length) const {
  int32_t node = 0, best = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& next = trie_[size_t(node)].next;
    uint8_t b = static_cast<uint8_t>(text[i]);
    auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(b, int32_t(-1)),
                               [](const auto& x, const auto& y) { return x.first < y.first; });
    if (it == next.end() || it->first != b) break;
    node = it->second;
    if (trie_[size_t(node)].pattern >= 0) {
      best = trie_[size_t(node)].pattern;
      *length = i + 1 - pos;
    }
  }
  return best;
}

void AddedTokenMatcher::split(std::string_view text, bool skip_special, std::vector<Segment>& out) const {
  size_t emitted_to = 0;  // HF's start_offset
  size_t pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    size_t length = 0;
    int32_t p = longest_at(text, pos, &length);
    if (p < 0) {
      ++pos;
      continue;
    }
    const AddedTokenPattern& tok = patterns_[size_t(p)];
    size_t start = pos, stop = pos + length;
    pos = stop;  // the next match starts after this one whether or not it is kept
    if (skip_special && tok.special) continue;
    if (tok.single_word) {
      bool space_before = start == 0 || !is_word_char(last_char(text.substr(0, start)));
      bool space_after = stop == text.size() || !is_word_char(first_char(text.substr(stop)));
      if (!space_before || !space_after) continue;
    }
    if (tok.lstrip) {
      size_t s = start;
      while (s > 0) {
        char32_t c = last_char(text.substr(0, s));
        if (c == kNoChar || !is_white_space(c)) break;
        s -= c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
      }
      start = std::max(s, emitted_to);  // spaces already taken by an earlier rstrip stay there
    }
    if (tok.rstrip) {
      while (stop < text.size()) {
        size_t len = utf8_char_length(text, stop);
        if (len == 0 || !is_white_space(utf8_decode(text, stop, len))) break;
        stop += len;
      }
    }
    // HF would panic on a token that an earlier rstrip swallowed whole; we keep the bytes once.
    if (start > stop) start = stop;
    if (emitted_to < start) out.push_back({emitted_to, start, -1});
    out.push_back({start, stop, tok.id});
    emitted_to = std::max(emitted_to, stop);
  }
  if (emitted_to < text.size()) out.push_back({emitted_to, text.size(), -1});
}

}  // namespace shardlm
