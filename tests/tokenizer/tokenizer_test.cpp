// The tokenizer on tests/data/tokenizer/tiny (a hand-written tokenizer.json whose ids can be
// worked out by hand: byte b has id b, merges "a b", "ab c", "Ġ a", "c d", "b c", "Ġ Ġ" are
// ids 256..261, "ĠĠĠ" is 262 but no merge makes it) and on Qwen3's real one.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "test_paths.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode_text.h"

namespace shardlm {
namespace {

using Ids = std::vector<int32_t>;

std::string tiny_dir() { return test::data_dir() + "/tokenizer/tiny"; }

const Tokenizer& tiny() {
  static const Tokenizer tok = Tokenizer::from_dir(tiny_dir());
  return tok;
}

const Tokenizer& qwen3() {
  static const Tokenizer tok = Tokenizer::from_dir(test::qwen3_tokenizer_dir());
  return tok;
}

TEST(ByteLevel, AllBytesRoundTrip) {
  std::string all;
  for (int b = 0; b < 256; ++b) all += char(b);
  std::string mapped = bytes_to_byte_level(all);
  std::string back;
  ASSERT_TRUE(byte_level_to_bytes(mapped, &back));
  EXPECT_EQ(back, all);
  // Printable ASCII maps to itself; space, newline and NUL to GPT-2's stand-ins.
  EXPECT_EQ(byte_to_unicode('a'), "a");
  EXPECT_EQ(byte_to_unicode(' '), "\xC4\xA0");   // Ġ
  EXPECT_EQ(byte_to_unicode('\n'), "\xC4\x8A");  // Ċ
  EXPECT_EQ(byte_to_unicode(0), "\xC4\x80");     // Ā
  std::string out;
  EXPECT_FALSE(byte_level_to_bytes("\xE4\xBD\xA0", &out));  // 你 is not in the alphabet
}

TEST(TokenizerTiny, MergesByRankNotPosition) {
  const Tokenizer& t = tiny();
  EXPECT_EQ(t.encode("abc"), (Ids{257}));       // a b -> ab (rank 0), ab c -> abc (rank 1)
  EXPECT_EQ(t.encode("abcd"), (Ids{257, 'd'}));  // ab first, so c d (rank 3) never forms
  EXPECT_EQ(t.encode("bcd"), (Ids{'b', 259}));   // c d (rank 3) before b c (rank 4)
  EXPECT_EQ(t.encode(" ab"), (Ids{' ', 256}));   // a b (rank 0) before Ġ a (rank 2)
  EXPECT_EQ(t.encode("a a"), (Ids{'a', 258}));   // GPT-2 regex: "a", " a"
  EXPECT_EQ(t.encode("   "), (Ids{261, ' '}));   // Ġ Ġ Ġ: the leftmost pair merges first
  EXPECT_EQ(t.encode("  a"), (Ids{' ', 258}));   // \s+(?!\S) leaves the last space to " a"
  EXPECT_EQ(t.encode(""), (Ids{}));
}

TEST(TokenizerTiny, NfcAndRawBytes) {
  const Tokenizer& t = tiny();
  EXPECT_EQ(t.encode("e\xCC\x81"), (Ids{0xC3, 0xA9}));  // e + U+0301 -> é (C3 A9)
  // Invalid UTF-8 is not an error: its bytes go through the byte-level alphabet.
  EXPECT_EQ(t.encode("\xFF\xFE"), (Ids{0xFF, 0xFE}));
  EXPECT_EQ(t.decode(t.encode("a\xFF" "b\x80")), "a\xFF" "b\x80");
}

TEST(TokenizerTiny, AddedTokens) {
  const Tokenizer& t = tiny();
  EXPECT_EQ(t.encode("ab<eos>c"), (Ids{256, 263, 'c'}));
  // Special tokens become plain text with parse_special = false; non-special ones stay tokens.
  EXPECT_EQ(t.encode("ab<eos>c", false), (Ids{256, '<', 'e', 'o', 's', '>', 'c'}));
  EXPECT_EQ(t.encode("<tag>", false), (Ids{264}));
  // [L] strips the whitespace on both sides into itself.
  EXPECT_EQ(t.encode("x [L]  y"), (Ids{'x', 265, 'y'}));
  // "ww" is single_word: only where no word character touches it.
  EXPECT_EQ(t.encode("a ww b"), (Ids{'a', ' ', 266, ' ', 'b'}));
  EXPECT_EQ(t.encode("aww"), (Ids{'a', 'w', 'w'}));
  EXPECT_EQ(t.encode("ww."), (Ids{266, '.'}));
  EXPECT_EQ(t.decode({263, 'a', 264}), "<eos>a<tag>");
  EXPECT_EQ(t.decode({265}), "[L]");
}

TEST(TokenizerTiny, VocabQueries) {
  const Tokenizer& t = tiny();
  EXPECT_EQ(t.vocab_size(), 267);
  EXPECT_EQ(t.token_id("<eos>"), 263);
  EXPECT_EQ(t.token_id("\xC4\xA0" "a"), 258);  // "Ġa", the vocab spelling
  EXPECT_EQ(t.token_id(" a"), 258);            // the same token by its bytes
  EXPECT_FALSE(t.token_id("zzz").has_value());
  EXPECT_EQ(t.eos_ids(), (Ids{263}));  // tokenizer_config.json eos_token {"content": "<eos>"}
  EXPECT_EQ(t.token_bytes(261), "  ");
  EXPECT_EQ(t.decode({261, ' '}), "   ");
}

TEST(TokenizerTiny, IdsWithoutATokenDecodeToNothingNegativeIdsAreErrors) {
  // As Hugging Face's decode: a model's padded vocabulary has ids the tokenizer lacks; skip them.
  const Tokenizer& t = tiny();
  EXPECT_EQ(t.decode({'a', 267, 'a'}), t.decode({'a', 'a'}));
  EXPECT_EQ(t.token_bytes(1 << 30), "");
  try {
    t.decode({'a', -5});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("-5"), std::string::npos) << e.what();
  }
}

TEST(TokenizerTiny, SpecOptions) {
  TokenizerSpec spec = load_tokenizer_json(tiny_dir());
  spec.byte_level_add_prefix_space = true;  // ByteLevel(add_prefix_space = true)
  Tokenizer prefixed(spec);
  EXPECT_EQ(prefixed.encode("ab"), (Ids{' ', 256}));
  EXPECT_EQ(prefixed.encode("a a"), (Ids{258, 258}));
  EXPECT_EQ(prefixed.encode(" ab"), (Ids{' ', 256}));  // already starts with a space

  spec = load_tokenizer_json(tiny_dir());
  spec.ignore_merges = true;  // a piece that is a vocab entry is taken whole
  Tokenizer whole(spec);
  EXPECT_EQ(whole.encode("   "), (Ids{262}));
  EXPECT_EQ(whole.encode("abcd"), (Ids{257, 'd'}));

  spec = load_tokenizer_json(tiny_dir());
  spec.split_regexes = {"b"};  // a Split(Isolated) before the byte-level step
  Tokenizer split(spec);
  EXPECT_EQ(split.encode("abc"), (Ids{'a', 'b', 'c'}));
}

TEST(TokenizerTiny, RandomBytesRoundTrip) {
  const Tokenizer& t = tiny();
  std::mt19937 rng(5);
  for (int round = 0; round < 300; ++round) {
    std::string s(size_t(rng() % 64), '\0');
    for (char& c : s) c = char(rng() % 256);
    // Every byte survives; only NFC may rewrite the well-formed parts.
    EXPECT_EQ(t.decode(t.encode(s)), nfc(s)) << "round " << round;
  }
  EXPECT_EQ(nfc("\xFF" "e\xCC\x81" "\xFE"), "\xFF" "\xC3\xA9" "\xFE");  // NFC runs between invalid bytes
}

TEST(TokenizerQwen3, SpecialTokens) {
  const Tokenizer& t = qwen3();
  EXPECT_EQ(t.encode("<|im_start|>user\nhi<|im_end|>"), (Ids{151644, 872, 198, 6023, 151645}));
  // Plain text: "<|", "im", "_start", "|>" as the Split regex cuts it.
  EXPECT_EQ(t.encode("<|im_start|>", false), (Ids{27, 91, 318, 4906, 91, 29}));
  // <think> is an added token but not special: still one token with parse_special = false.
  EXPECT_EQ(t.encode("<think>\nok\n</think>", false), (Ids{151667, 198, 562, 198, 151668}));
  EXPECT_EQ(t.encode("Hello world"), (Ids{9707, 1879}));
  EXPECT_EQ(t.decode({151644, 872, 198, 6023, 151645}), "<|im_start|>user\nhi<|im_end|>");
  EXPECT_EQ(t.token_bytes(151643), "<|endoftext|>");
  EXPECT_EQ(t.vocab_size(), 151669);
  EXPECT_EQ(t.token_id("<|im_end|>"), 151645);
  EXPECT_EQ(t.eos_ids(), (Ids{151645}));  // tokenizer_config.json eos_token
}

TEST(TokenizerQwen3, StreamedTokenBytesConcatenateToDecode) {
  const Tokenizer& t = qwen3();
  const std::string text = "Grüße 😀 中文 <think>x</think>";
  Ids ids = t.encode(text);
  std::string streamed;
  for (int32_t id : ids) streamed += t.token_bytes(id);
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(t.decode(ids), text);
}

}  // namespace
}  // namespace shardlm
