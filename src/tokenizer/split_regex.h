// A pre-tokenizer split pattern (Oniguruma syntax, as tokenizer.json holds it) run with PCRE2,
// with the piece boundaries Hugging Face's Split(behavior = Isolated) produces.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace shardlm {

// Rewrites the Oniguruma constructs whose PCRE2 spelling or meaning differs: \s and \S (Unicode
// White_Space in Oniguruma; PCRE2's \s also takes U+180E), \h (hex digit in Oniguruma), \w,
// \uXXXX, (?m) (dot-all in Oniguruma). Throws Error naming `source` for constructs PCRE2 cannot
// express (nested classes, && intersections).
std::string onig_to_pcre2(const std::string& pattern, const std::string& source);

class SplitRegex {
 public:
  // Compiles (UTF + UCP, JIT when available); throws Error naming `source` and the pattern.
  SplitRegex(const std::string& onig_pattern, const std::string& source);
  ~SplitRegex();
  SplitRegex(SplitRegex&&) noexcept;
  SplitRegex& operator=(SplitRegex&&) noexcept;
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;

  // Calls piece(begin, end) for every non-empty piece of text in order: each match and each gap
  // between matches. The pieces cover text exactly. Invalid UTF-8 never matches (it lands in gaps).
  void split(std::string_view text, const std::function<void(size_t, size_t)>& piece) const;

 private:
  struct Compiled;
  std::unique_ptr<Compiled> re_;
  std::string source_;
};

// The pattern of a ByteLevel pre-tokenizer with use_regex (GPT-2's).
extern const char* const kGpt2SplitPattern;

}  // namespace shardlm
