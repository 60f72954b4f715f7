// Qwen3's real tokenizer against Hugging Face `tokenizers`: the ids and decodes written by
// tests/reference/tokenizer_golden.py for every string of tests/data/tokenizer/strings.json.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "test_paths.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode_text.h"

namespace shardlm {
namespace {

using nlohmann::json;

json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

std::string strings_path() { return test::data_dir() + "/tokenizer/strings.json"; }

// SHARDLM_TOKENIZER_GOLDEN points elsewhere while developing; the committed file is the default.
std::string golden_path() {
  const char* env = std::getenv("SHARDLM_TOKENIZER_GOLDEN");
  return env && *env ? env : test::data_dir() + "/tokenizer/qwen3_golden.json";
}

std::string show(const std::string& s) {
  json j = s;
  std::string d = j.dump(-1, ' ', true);  // ASCII-escaped, so odd whitespace is visible
  return d.size() > 160 ? d.substr(0, 160) + "...\"" : d;
}

std::string show(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size() && i < 40; ++i) out += (i ? "," : "") + std::to_string(ids[i]);
  return out + (ids.size() > 40 ? ",...]" : "]");
}

const Tokenizer& qwen3() {
  static const Tokenizer tok = Tokenizer::from_dir(test::qwen3_tokenizer_dir());
  return tok;
}

TEST(TokenizerGolden, StringsSetIsLargeAndVaried) {
  json strings = read_json(strings_path());
  ASSERT_TRUE(strings.is_array());
  EXPECT_GE(strings.size(), 220u);
  size_t longest = 0;
  bool has_empty = false;
  for (const auto& s : strings) {
    longest = std::max(longest, s.get<std::string>().size());
    has_empty |= s.get<std::string>().empty();
  }
  EXPECT_GE(longest, 5000u);
  EXPECT_TRUE(has_empty);
}

TEST(TokenizerGolden, MatchesHuggingFaceTokenizers) {
  const std::string path = golden_path();
  if (!std::filesystem::exists(path)) {
    FAIL() << path << " does not exist. Generate it on a machine with HF `tokenizers` (pip install tokenizers):\n"
           << "  python3 tests/reference/tokenizer_golden.py --tokenizer assets/qwen3/tokenizer.json "
              "--strings tests/data/tokenizer/strings.json --out tests/data/tokenizer/qwen3_golden.json";
  }
  json golden = read_json(path);
  json strings = read_json(strings_path());
  ASSERT_TRUE(golden.is_array());
  // A golden file from an older strings.json would silently skip the new strings.
  ASSERT_EQ(golden.size(), strings.size()) << path << " is stale: re-run tests/reference/tokenizer_golden.py";
  for (size_t i = 0; i < golden.size(); ++i)
    ASSERT_EQ(golden[i].at("text").get<std::string>(), strings[i].get<std::string>())
        << path << " is stale at string " << i << ": re-run tests/reference/tokenizer_golden.py";

  const Tokenizer& tok = qwen3();
  size_t encode_failures = 0, decode_failures = 0;
  for (size_t i = 0; i < golden.size(); ++i) {
    const std::string text = golden[i].at("text").get<std::string>();
    const std::vector<int32_t> want = golden[i].at("ids").get<std::vector<int32_t>>();
    const std::string want_decoded = golden[i].at("decoded").get<std::string>();
    std::vector<int32_t> got = tok.encode(text);
    if (got != want) {
      ++encode_failures;
      ADD_FAILURE() << "string " << i << " " << show(text) << "\n  HF:   " << show(want) << "\n  ours: " << show(got);
    }
    std::string decoded = tok.decode(want);
    if (decoded != want_decoded) {
      ++decode_failures;
      ADD_FAILURE() << "decode of string " << i << " " << show(text) << "\n  HF:   " << show(want_decoded)
                    << "\n  ours: " << show(decoded);
    }
  }
  EXPECT_EQ(encode_failures, 0u) << "of " << golden.size() << " strings";
  EXPECT_EQ(decode_failures, 0u) << "of " << golden.size() << " strings";
}

// Encoding loses nothing but what NFC changes, with special tokens parsed or not.
TEST(TokenizerGolden, DecodeOfEncodeIsNfcOfInput) {
  json strings = read_json(strings_path());
  const Tokenizer& tok = qwen3();
  for (size_t i = 0; i < strings.size(); ++i) {
    const std::string text = strings[i].get<std::string>();
    const std::string expected = nfc(text);
    EXPECT_EQ(tok.decode(tok.encode(text, true)), expected) << "string " << i << " " << show(text);
    EXPECT_EQ(tok.decode(tok.encode(text, false)), expected) << "string " << i << " (parse_special=false) "
                                                              << show(text);
  }
}

}  // namespace
}  // namespace shardlm
