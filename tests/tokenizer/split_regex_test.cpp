// The Split pre-tokenizer: Oniguruma patterns run with PCRE2, pieces as HF's Isolated behaviour
// (and Rust's onig crate iteration) produce them.
#include <gtest/gtest.h>

#include "core/error.h"
#include "tokenizer/split_regex.h"

namespace shardlm {
namespace {

std::vector<std::string> pieces(const std::string& pattern, const std::string& text) {
  SplitRegex re(pattern, "test");
  std::vector<std::string> out;
  re.split(text, [&](size_t b, size_t e) { out.push_back(text.substr(b, e - b)); });
  return out;
}

using Pieces = std::vector<std::string>;

const char* const kQwen3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

TEST(SplitRegex, Qwen3PatternPieces) {
  EXPECT_EQ(pieces(kQwen3Pattern, "Hello, world!"), (Pieces{"Hello", ",", " world", "!"}));
  EXPECT_EQ(pieces(kQwen3Pattern, "it's 2024"), (Pieces{"it", "'s", " ", "2", "0", "2", "4"}));
  EXPECT_EQ(pieces(kQwen3Pattern, "IT'S"), (Pieces{"IT", "'S"}));
  EXPECT_EQ(pieces(kQwen3Pattern, "a   b\n\n c"), (Pieces{"a", "  ", " b", "\n\n", " c"}));
  EXPECT_EQ(pieces(kQwen3Pattern, "x  "), (Pieces{"x", "  "}));
  EXPECT_EQ(pieces(kQwen3Pattern, ""), (Pieces{}));
  // U+00A0 is White_Space: it is the optional non-letter before a word, not part of \s+ here.
  EXPECT_EQ(pieces(kQwen3Pattern, "a\xC2\xA0" "b"), (Pieces{"a", "\xC2\xA0" "b"}));
  // U+180E is not White_Space (PCRE2's own \s would say it is).
  EXPECT_EQ(pieces(R"(\s+)", "a\xE1\xA0\x8E" "b c"), (Pieces{"a\xE1\xA0\x8E" "b", " ", "c"}));
  // Invalid UTF-8 never matches; it lands in the gaps and nothing is lost.
  EXPECT_EQ(pieces(kQwen3Pattern, "ab\xFF" "cd"), (Pieces{"ab", "\xFF", "cd"}));
}

TEST(SplitRegex, EmptyMatchesFollowTheOnigCrate) {
  // After an empty match the search moves one character on; one right after a match is dropped.
  EXPECT_EQ(pieces("a*", "baa"), (Pieces{"b", "aa"}));
  EXPECT_EQ(pieces("x*", "ab"), (Pieces{"a", "b"}));
  EXPECT_EQ(pieces("x*", "\xE4\xBD\xA0\xE5\xA5\xBD"), (Pieces{"\xE4\xBD\xA0", "\xE5\xA5\xBD"}));  // whole characters
}

TEST(SplitRegex, OnigurumaSpellings) {
  EXPECT_EQ(onig_to_pcre2(R"(\s\S)", "t"), R"(\p{White_Space}\P{White_Space})");
  EXPECT_EQ(onig_to_pcre2(R"([^\s\p{L}])", "t"), R"([^\p{White_Space}\p{L}])");
  EXPECT_EQ(onig_to_pcre2(R"(\h+[\h_])", "t"), R"([0-9a-fA-F]+[0-9a-fA-F_])");  // \h is a hex digit
  EXPECT_EQ(onig_to_pcre2(R"([一-龥\u3040-ゟ])", "t"), R"([一-龥\x{3040}-ゟ])");
  EXPECT_EQ(onig_to_pcre2("(?m:a.b)", "t"), "(?s:a.b)");  // Oniguruma's m is dot-all
  EXPECT_EQ(onig_to_pcre2(R"([]a][[:alpha:]]\\s)", "t"), R"([]a][[:alpha:]]\\s)");
  EXPECT_THROW(onig_to_pcre2("[a-z&&[^aeiou]]", "t"), Error);
  EXPECT_EQ(pieces(R"(\h+)", "xx1fz"), (Pieces{"xx", "1f", "z"}));
  EXPECT_EQ(pieces(R"(\u00e9)", "caf\xC3\xA9!"), (Pieces{"caf", "\xC3\xA9", "!"}));
}

TEST(SplitRegex, BadPatternIsAnErrorNamingTheSource) {
  try {
    SplitRegex re("(a", "dir/tokenizer.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("dir/tokenizer.json"), std::string::npos) << what;
    EXPECT_NE(what.find("(a"), std::string::npos) << what;
  }
}

TEST(SplitRegex, LongRunsStayLinear) {
  // A megabyte of spaces, then a word: \s*[\r\n]+ backtracks over the run once, not per position.
  std::string text(1 << 20, ' ');
  text += "x";
  Pieces got = pieces(kQwen3Pattern, text);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].size(), size_t(1 << 20) - 1);
  EXPECT_EQ(got[1], " x");
}

}  // namespace
}  // namespace shardlm
