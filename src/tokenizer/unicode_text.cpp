#include "tokenizer/unicode_text.h"

#include <utf8proc.h>

#include <cstdlib>

namespace shardlm {

size_t utf8_char_length(std::string_view text, size_t i) {
  const size_t n = text.size();
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  unsigned char c = byte(i);
  if (c < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;       // no overlong forms
    else if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    else if (c == 0xF4) hi = 0x8F;  // nothing past U+10FFFF
  } else {
    return 0;
  }
  if (i + len > n) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (size_t k = 2; k < len; ++k)
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
  return len;
}

char32_t utf8_decode(std::string_view text, size_t i, size_t length) {
  unsigned char c = static_cast<unsigned char>(text[i]);
  if (length == 1) return c;
  char32_t cp = c & (0x7F >> length);
  for (size_t k = 1; k < length; ++k) cp = (cp << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
  return cp;
}

char32_t first_char(std::string_view text) {
  if (text.empty()) return kNoChar;
  size_t len = utf8_char_length(text, 0);
  return len ? utf8_decode(text, 0, len) : kNoChar;
}

char32_t last_char(std::string_view text) {
  if (text.empty()) return kNoChar;
  // A character is at most 4 bytes: find where the last one starts.
  size_t start = text.size() - 1;
  while (start > 0 && text.size() - start < 4 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80)
    --start;
  size_t len = utf8_char_length(text, start);
  return len && start + len == text.size() ? utf8_decode(text, start, len) : kNoChar;
}

namespace {
// NFC of a run known to be well-formed UTF-8 (embedded NULs included: the length is explicit).
void append_nfc(std::string_view run, std::string& out) {
  bool ascii = true;
  for (char c : run) ascii &= static_cast<unsigned char>(c) < 0x80;
  if (ascii) {  // ASCII is its own NFC; skips utf8proc's allocation for most text
    out += run;
    return;
  }
  utf8proc_uint8_t* result = nullptr;
  utf8proc_ssize_t len =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(run.data()), utf8proc_ssize_t(run.size()), &result,
                   utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (len < 0) {  // cannot happen for well-formed input; keep the text rather than lose it
    out += run;
  } else {
    out.append(reinterpret_cast<const char*>(result), size_t(len));
  }
  std::free(result);
}
}  // namespace

std::string nfc(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t run_start = 0, i = 0;
  while (i < text.size()) {
    size_t len = utf8_char_length(text, i);
    if (len) {
      i += len;
      continue;
    }
    append_nfc(text.substr(run_start, i - run_start), out);
    out += text[i];  // an invalid byte stays as it is
    run_start = ++i;
  }
  append_nfc(text.substr(run_start), out);
  return out;
}

bool is_white_space(char32_t c) {
  if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || c == 0x20;
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  if (c == kNoChar || c > 0x10FFFF) return false;
  if (c == 0x200C || c == 0x200D) return true;  // Join_Control
  switch (utf8proc_category(utf8proc_int32_t(c))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

}  // namespace shardlm
