// The few Unicode facts the tokenizer needs: UTF-8 decoding that tolerates invalid bytes, NFC,
// and the character classes Hugging Face's Rust code tests with (\s and \w of the regex crate).
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace shardlm {

// Length of the well-formed UTF-8 character at text[i] (1..4), or 0 if the bytes there are not
// one (stray continuation byte, overlong form, surrogate, past U+10FFFF, truncated).
size_t utf8_char_length(std::string_view text, size_t i);
// The code point of that character; only call where utf8_char_length returned > 0.
char32_t utf8_decode(std::string_view text, size_t i, size_t length);

// The first / last code point of text, or U+FFFFFFFF when text is empty or does not start / end
// with a well-formed character.
constexpr char32_t kNoChar = 0xFFFFFFFF;
char32_t first_char(std::string_view text);
char32_t last_char(std::string_view text);

// Unicode NFC of text. Well-formed runs are composed; invalid bytes are kept as they are (Hugging
// Face only ever sees valid UTF-8; for us they pass through to the byte-level step untouched).
std::string nfc(std::string_view text);

// Unicode White_Space (what \s matches in both Rust's regex crate and Oniguruma).
bool is_white_space(char32_t c);
// Rust regex \w: Alphabetic, marks, decimal digits, connector punctuation, join controls.
bool is_word_char(char32_t c);

}  // namespace shardlm
