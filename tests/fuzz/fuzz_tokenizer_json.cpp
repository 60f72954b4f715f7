// libFuzzer target: arbitrary bytes as a tokenizer.json. Parsing must either give a spec or throw
// shardlm::Error; a spec must build a Tokenizer (or throw Error) that encodes and decodes a
// fixed text without crashing. Anything else (a crash, a sanitizer report, another exception)
// is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "formats/tokenizer_spec.h"
#include "tokenizer/tokenizer.h"

namespace {
// Touches every stage: added tokens, NFC (e + combining acute), the regexes, whitespace runs,
// digits, CJK, emoji, invalid UTF-8.
const std::string kText =
    "Hello, world! <s> it's 12345  e\xCC\x81t\xC3\xA9 \n\n\t  \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80 ab<|x|>\xFF";
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    shardlm::TokenizerSpec spec =
        shardlm::parse_tokenizer_json(std::string(reinterpret_cast<const char*>(data), size), "fuzz/tokenizer.json");
    shardlm::Tokenizer tok(std::move(spec));
    for (bool parse_special : {true, false}) {
      std::vector<int32_t> ids = tok.encode(kText, parse_special);
      std::string text = tok.decode(ids);
      for (int32_t id : ids) (void)tok.token_bytes(id);
      (void)text;
    }
    (void)tok.token_id("<s>");
    (void)tok.vocab_size();
  } catch (const shardlm::Error&) {
    // Bad input, reported: the expected outcome.
  }
  return 0;
}
