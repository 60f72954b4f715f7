// parse_tokenizer_json / load_tokenizer_json: what they read from real files, and the one-line
// Error (naming the file and the field or kind) for malformed or unsupported ones.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/tokenizer_spec.h"
#include "test_paths.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer.h"

namespace shardlm {
namespace {

using nlohmann::json;

// The smallest byte-level BPE file: four tokens, one merge.
json minimal() {
  return json::parse(R"({
    "added_tokens": [{"id": 4, "content": "<s>", "special": true, "normalized": false,
                      "lstrip": false, "rstrip": false, "single_word": false}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3}, "merges": [["a", "b"]]}
  })");
}

// Expects parse (+ build) of j to throw an Error whose message names the source and `needle`.
void expect_error(const json& j, const std::string& needle) {
  try {
    Tokenizer t(parse_tokenizer_json(j.dump(), "bad/tokenizer.json"));
    ADD_FAILURE() << "no error; wanted one mentioning '" << needle << "' for " << j.dump().substr(0, 200);
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("bad/tokenizer.json"), std::string::npos) << what;
    EXPECT_NE(what.find(needle), std::string::npos) << "wanted '" << needle << "' in: " << what;
  }
}

TEST(TokenizerJson, ReadsQwen3) {
  TokenizerSpec spec = load_tokenizer_json(test::qwen3_tokenizer_dir());
  EXPECT_EQ(spec.vocab.size(), 151643u);
  EXPECT_EQ(spec.merges.size(), 151387u);
  EXPECT_EQ(spec.merges[0], (std::pair<std::string, std::string>("\xC4\xA0", "\xC4\xA0")));  // Ġ Ġ
  EXPECT_EQ(spec.vocab[0], "!");
  ASSERT_EQ(spec.split_regexes.size(), 1u);
  EXPECT_EQ(spec.split_regexes[0].substr(0, 32), R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\)");
  EXPECT_TRUE(spec.normalize_nfc);
  EXPECT_FALSE(spec.byte_level_add_prefix_space);
  EXPECT_FALSE(spec.byte_level_use_regex);
  EXPECT_FALSE(spec.ignore_merges);
  ASSERT_EQ(spec.added_tokens.size(), 26u);
  EXPECT_EQ(spec.added_tokens[0].content, "<|endoftext|>");
  EXPECT_EQ(spec.added_tokens[0].id, 151643);
  EXPECT_TRUE(spec.added_tokens[0].special);
  EXPECT_EQ(spec.added_tokens[25].content, "</think>");
  EXPECT_FALSE(spec.added_tokens[25].special);
  EXPECT_EQ(spec.eos_ids, (std::vector<int32_t>{151645}));
  EXPECT_NE(spec.source.find("tokenizer.json"), std::string::npos);
}

TEST(TokenizerJson, MinimalFileWorksAndGpt2RegexApplies) {
  TokenizerSpec spec = parse_tokenizer_json(minimal().dump(), "min.json");
  EXPECT_TRUE(spec.byte_level_use_regex);
  Tokenizer t(std::move(spec));
  EXPECT_EQ(t.encode("ab <s>ab"), (std::vector<int32_t>{2, 3, 4, 2}));  // "ab", " ", <s>, "ab"
  EXPECT_EQ(t.vocab_size(), 5);
}

// As in HF, an added token that is already a vocab entry keeps the vocab's id.
TEST(TokenizerJson, AddedTokenInVocabTakesTheVocabId) {
  json j = minimal();
  j["added_tokens"].push_back(json::parse(R"({"id": 9, "content": "ab", "special": true})"));
  TokenizerSpec spec = parse_tokenizer_json(j.dump(), "dup.json");
  ASSERT_EQ(spec.added_tokens.size(), 2u);
  EXPECT_EQ(spec.added_tokens[1].id, 2);
  Tokenizer t(std::move(spec));
  EXPECT_EQ(t.encode("bab"), (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(t.vocab_size(), 5);
}

TEST(TokenizerJson, LegacyMergeStringsEqualPairs) {
  json j = minimal();
  j["model"]["merges"] = {"#version: 0.2", "a b"};
  TokenizerSpec spec = parse_tokenizer_json(j.dump(), "legacy.json");
  ASSERT_EQ(spec.merges.size(), 1u);
  EXPECT_EQ(spec.merges[0].first, "a");
  EXPECT_EQ(spec.merges[0].second, "b");
}

TEST(TokenizerJson, SequencesAndLiteralSplits) {
  json j = minimal();
  j["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [{"type": "NFC"}]})");
  j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"String": "a.b"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": true, "use_regex": false}]})");
  TokenizerSpec spec = parse_tokenizer_json(j.dump(), "seq.json");
  EXPECT_TRUE(spec.normalize_nfc);
  ASSERT_EQ(spec.split_regexes.size(), 1u);
  EXPECT_EQ(spec.split_regexes[0], "a\\.b");  // a literal, not "a any-char b"
  EXPECT_TRUE(spec.byte_level_add_prefix_space);
  EXPECT_FALSE(spec.byte_level_use_regex);
}

// Llama-3's layout: no normalizer, digits split in runs of at most three, ignore_merges.
TEST(TokenizerJson, Llama3StyleFile) {
  json j = minimal();
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_to_unicode(uint8_t(b))] = b;
  vocab["12"] = 256;
  vocab["123"] = 257;
  vocab["34"] = 258;
  j["model"]["vocab"] = vocab;
  j["model"]["merges"] = json::parse(R"([["3", "4"], ["1", "2"], ["12", "3"]])");
  j["model"]["ignore_merges"] = true;
  j["added_tokens"] = json::parse(R"([{"id": 259, "content": "<|begin_of_text|>", "special": true,
                                       "normalized": false, "lstrip": false, "rstrip": false, "single_word": false}])");
  j["pre_tokenizer"] = json::parse(R"json({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex":
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
       "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})json");
  TokenizerSpec spec = parse_tokenizer_json(j.dump(), "llama3.json");
  EXPECT_TRUE(spec.ignore_merges);
  EXPECT_FALSE(spec.normalize_nfc);
  Tokenizer t(std::move(spec));
  // "123" | "45": as one piece, 3 4 (rank 0) would have merged first: [12, 34, 5].
  EXPECT_EQ(t.encode("12345"), (std::vector<int32_t>{257, '4', '5'}));
  EXPECT_EQ(t.encode("<|begin_of_text|>1234"), (std::vector<int32_t>{259, 257, '4'}));
  EXPECT_EQ(t.encode("e\xCC\x81"), (std::vector<int32_t>{'e', 0xCC, 0x81}));  // no NFC
}

TEST(TokenizerJson, MalformedFilesAreErrorsNamingTheField) {
  expect_error(json::parse("[1, 2]"), "object");
  {
    json j = minimal();
    j.erase("model");
    expect_error(j, "missing 'model'");
  }
  {
    json j = minimal();
    j["model"]["vocab"] = json::array({"a", "b"});
    expect_error(j, "vocab");
  }
  {
    json j = minimal();
    j["model"]["vocab"]["b"] = "one";
    expect_error(j, "vocab[\"b\"]");
  }
  {
    json j = minimal();
    j["model"]["vocab"]["b"] = -3;
    expect_error(j, "-3");
  }
  {
    json j = minimal();
    j["model"]["vocab"]["b"] = 0;  // two tokens with id 0
    expect_error(j, "id 0");
  }
  {
    json j = minimal();
    j["model"]["vocab"]["z"] = 1 << 22;  // one token far past the others
    expect_error(j, "sparse");
  }
  {
    json j = minimal();
    j["model"].erase("merges");
    expect_error(j, "merges");
  }
  {
    json j = minimal();
    j["model"]["merges"] = json::array({json::array({"a"})});
    expect_error(j, "merges[0]");
  }
  {
    json j = minimal();
    j["model"]["merges"] = json::array({"a b c"});
    expect_error(j, "merges[0]");
  }
  {
    json j = minimal();
    j["model"]["merges"] = json::array({json::array({"a", "q"})});  // q is not a token
    expect_error(j, "\"q\"");
  }
  {
    json j = minimal();
    j["model"]["merges"] = json::array({json::array({"b", "a"})});  // "ba" is not a token
    expect_error(j, "\"ba\"");
  }
  {
    json j = minimal();
    j["added_tokens"][0]["content"] = 7;
    expect_error(j, "content");
  }
  {
    json j = minimal();
    j["added_tokens"][0].erase("id");
    expect_error(j, "'id'");
  }
  {
    json j = minimal();
    j["added_tokens"][0]["special"] = "yes";
    expect_error(j, "special");
  }
  expect_error(json::parse("{\"model\": 3}"), "model");
  try {
    parse_tokenizer_json("{\"model\": {", "bad/tokenizer.json");
    ADD_FAILURE() << "truncated JSON accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad/tokenizer.json: invalid JSON"), std::string::npos) << e.what();
  }
}

TEST(TokenizerJson, UnsupportedKindsAreNamed) {
  {
    json j = minimal();
    j["model"]["type"] = "WordPiece";
    expect_error(j, "WordPiece");
  }
  {
    json j = minimal();
    j["normalizer"] = json::parse(R"({"type": "Lowercase"})");
    expect_error(j, "Lowercase");
  }
  {
    json j = minimal();
    j["pre_tokenizer"] = json::parse(R"({"type": "Metaspace", "replacement": "▁"})");
    expect_error(j, "Metaspace");
  }
  {
    json j = minimal();
    j["pre_tokenizer"] = json::parse(
        R"({"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Removed", "invert": false})");
    expect_error(j, "Removed");
  }
  {
    json j = minimal();
    j["pre_tokenizer"] = json::parse(
        R"({"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Isolated", "invert": false})");
    expect_error(j, "no ByteLevel");
  }
  {
    json j = minimal();
    j["pre_tokenizer"] = json::parse(
        R"({"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false})");
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers", {j["pre_tokenizer"], {{"type", "ByteLevel"}, {"use_regex", false}}}}};
    expect_error(j, "(unclosed");
  }
  {
    json j = minimal();
    j["decoder"] = json::parse(R"({"type": "WordPiece"})");
    expect_error(j, "WordPiece");
  }
  {
    json j = minimal();
    j["model"]["byte_fallback"] = true;
    expect_error(j, "byte_fallback");
  }
  {
    json j = minimal();
    j["model"]["dropout"] = 0.1;
    expect_error(j, "dropout");
  }
}

TEST(TokenizerJson, MissingFileIsNamed) {
  try {
    load_tokenizer_json(test::scratch_dir("tokenizer_json_missing"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json: cannot open"), std::string::npos) << e.what();
  }
}

TEST(TokenizerJson, GenerationConfigAddsEosIds) {
  std::string dir = test::scratch_dir("tokenizer_json_generation_config");
  std::ofstream(dir + "/tokenizer.json") << minimal().dump();
  std::ofstream(dir + "/tokenizer_config.json") << R"({"eos_token": "<s>"})";
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": [4, 2]})";
  EXPECT_EQ(load_tokenizer_json(dir).eos_ids, (std::vector<int32_t>{4, 2}));
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": "x"})";
  EXPECT_THROW(load_tokenizer_json(dir), Error);
}

}  // namespace
}  // namespace shardlm
