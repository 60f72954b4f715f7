#include "tokenizer/split_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "tokenizer/unicode_text.h"

namespace shardlm {

const char* const kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// Oniguruma's \w: Letter | Mark | Decimal_Number | Connector_Punctuation.
constexpr const char* kWordClassBody = R"(\p{L}\p{M}\p{Nd}\p{Pc})";

std::string pcre2_error_text(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof buf) < 0) return "error " + std::to_string(code);
  return reinterpret_cast<const char*>(buf);
}

// Per-thread match state: encode() is const and may run on several threads at once.
struct MatchResources {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  MatchResources() {
    data = pcre2_match_data_create(1, nullptr);  // only the whole match is needed
    context = pcre2_match_context_create(nullptr);
    // Long whitespace runs backtrack over every character; the default 32 KiB can be too small.
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (!data || !context || !jit_stack) fail("tokenizer: out of memory creating regex match state");
    pcre2_jit_stack_assign(context, nullptr, jit_stack);
    // Bounds a pathological pattern (from a hostile file) instead of hanging; far above what the
    // real patterns need even on megabyte-long pieces.
    pcre2_set_match_limit(context, 100'000'000);
  }
  ~MatchResources() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchResources& match_resources() {
  thread_local MatchResources r;
  return r;
}

}  // namespace

std::string onig_to_pcre2(const std::string& p, const std::string& source) {
  std::string out;
  out.reserve(p.size() + 32);
  bool in_class = false;
  bool class_start = false;  // just after '[' or '[^': a ']' here is a literal
  size_t i = 0;
  const size_t n = p.size();
  auto unsupported = [&](const char* what) {
    fail("{}: split pattern uses {} (not supported): {}", source, what, p);
  };
  while (i < n) {
    char c = p[i];
    if (c == '\\' && i + 1 < n) {
      char e = p[i + 1];
      class_start = false;
      switch (e) {
        case 's': out += R"(\p{White_Space})"; i += 2; continue;
        case 'S': out += R"(\P{White_Space})"; i += 2; continue;
        case 'h': out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]"; i += 2; continue;
        case 'H':
          if (in_class) unsupported("\\H inside a character class");
          out += "[^0-9a-fA-F]"; i += 2; continue;
        case 'w':
          out += in_class ? std::string(kWordClassBody) : "[" + std::string(kWordClassBody) + "]";
          i += 2; continue;
        case 'W':
          if (in_class) unsupported("\\W inside a character class");
          out += "[^" + std::string(kWordClassBody) + "]"; i += 2; continue;
        case 'u':
          if (i + 6 <= n && is_hex(p[i + 2]) && is_hex(p[i + 3]) && is_hex(p[i + 4]) &&
              is_hex(p[i + 5])) {
            out += "\\x{" + p.substr(i + 2, 4) + "}";
            i += 6;
            continue;
          }
          break;
        default:
          break;
      }
      // Any other escape: copy the backslash and the whole (possibly multi-byte) character.
      size_t len = utf8_char_length(p, i + 1);
      if (len == 0) len = 1;
      out.append(p, i, 1 + len);
      i += 1 + len;
      continue;
    }
    if (in_class) {
      if (c == '[') {
        if (i + 1 < n && p[i + 1] == ':') {  // POSIX class [:alpha:], the same in both
          size_t end = p.find(":]", i + 2);
          if (end == std::string::npos) unsupported("an unterminated POSIX class");
          out.append(p, i, end + 2 - i);
          i = end + 2;
          class_start = false;
          continue;
        }
        unsupported("a nested character class");
      }
      if (c == '&' && i + 1 < n && p[i + 1] == '&') unsupported("a class intersection (&&)");
      if (c == ']' && !class_start) in_class = false;
      class_start = false;
      out += c;
      ++i;
      continue;
    }
    if (c == '[') {
      in_class = true;
      class_start = true;
      out += c;
      ++i;
      if (i < n && p[i] == '^') out += p[i++];
      continue;
    }
    if (c == '(' && i + 1 < n && p[i + 1] == '?') {
      // Option groups (?imx-imx) / (?imx-imx:...): Oniguruma's m is PCRE2's s (dot-all).
      size_t j = i + 2;
      while (j < n && (p[j] == 'i' || p[j] == 'm' || p[j] == 'x' || p[j] == '-')) ++j;
      if (j > i + 2 && j < n && (p[j] == ':' || p[j] == ')')) {
        out += "(?";
        for (size_t k = i + 2; k < j; ++k) out += p[k] == 'm' ? 's' : p[k];
        i = j;
        continue;
      }
    }
    out += c;
    ++i;
  }
  return out;
}

struct SplitRegex::Compiled {
  pcre2_code* code = nullptr;
  ~Compiled() { pcre2_code_free(code); }
};

SplitRegex::SplitRegex(const std::string& onig_pattern, const std::string& source)
    : re_(std::make_unique<Compiled>()), source_(source) {
  std::string pattern = onig_to_pcre2(onig_pattern, source);
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  // MULTILINE: in Oniguruma ^ and $ match at line breaks.
  re_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                            PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_MULTILINE, &err, &err_offset,
                            nullptr);
  if (!re_->code)
    fail("{}: split pattern does not compile ({} at offset {}): {}", source, pcre2_error_text(err), err_offset,
         onig_pattern);
  pcre2_jit_compile(re_->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if unavailable
}

SplitRegex::~SplitRegex() = default;
SplitRegex::SplitRegex(SplitRegex&&) noexcept = default;
SplitRegex& SplitRegex::operator=(SplitRegex&&) noexcept = default;

void SplitRegex::split(std::string_view text, const std::function<void(size_t, size_t)>& piece) const {
  MatchResources& r = match_resources();
  const size_t n = text.size();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  // The iteration of Rust's onig crate (FindMatches): after an empty match the search moves on
  // one character, and an empty match right after a non-empty one is dropped.
  size_t search_from = 0, emitted_to = 0;
  bool skip_next_empty = false;
  while (search_from <= n) {
    int rc = pcre2_match(re_->code, subject, n, search_from, 0, r.data, r.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0)
      fail("{}: split pattern failed on a piece of {} bytes: {}", source_, n, pcre2_error_text(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(r.data);
    size_t start = ov[0], end = ov[1];
    if (end < start) end = start;       // \K in a lookahead can report this; treat as empty
    if (start < emitted_to) start = emitted_to;  // never hand out a byte twice
    if (end < start) end = start;
    search_from = end;
    if (start == end) {
      size_t len = search_from < n ? utf8_char_length(text, search_from) : 1;
      search_from += len ? len : 1;
      if (skip_next_empty) {
        skip_next_empty = false;
        continue;
      }
    } else {
      skip_next_empty = true;
    }
    if (start > emitted_to) piece(emitted_to, start);
    if (end > start) piece(start, end);
    if (end > emitted_to) emitted_to = end;
  }
  if (emitted_to < n) piece(emitted_to, n);
}

}  // namespace shardlm
