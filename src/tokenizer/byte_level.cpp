#include "tokenizer/byte_level.h"

#include <unordered_map>

namespace shardlm {

namespace {
std::string utf8_encode(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xc0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3f));
  } else {
    s += char(0xe0 | (cp >> 12));
    s += char(0x80 | ((cp >> 6) & 0x3f));
    s += char(0x80 | (cp & 0x3f));
  }
  return s;
}

struct Tables {
  std::array<std::string, 256> forward;
  std::unordered_map<uint32_t, uint8_t> backward;  // code point -> byte
  Tables() {
    // Printable Latin-1 bytes map to themselves; the other 68 go to 256, 257, ... in byte order.
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      uint32_t cp = printable ? b : next++;
      forward[b] = utf8_encode(cp);
      backward[cp] = uint8_t(b);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}
}  // namespace

const std::string& byte_to_unicode(uint8_t b) { return tables().forward[b]; }

std::string bytes_to_byte_level(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) out += tables().forward[c];
  return out;
}

bool byte_level_to_bytes(std::string_view text, std::string* out) {
  out->clear();
  const auto& back = tables().backward;
  for (size_t i = 0; i < text.size();) {
    unsigned char c = text[i];
    uint32_t cp;
    size_t len;
    if (c < 0x80) cp = c, len = 1;
    else if ((c & 0xe0) == 0xc0) cp = c & 0x1f, len = 2;
    else if ((c & 0xf0) == 0xe0) cp = c & 0x0f, len = 3;
    else return false;  // the alphabet has no 4-byte code points
    if (i + len > text.size()) return false;
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (uint8_t(text[i + k]) & 0x3f);
    auto it = back.find(cp);
    if (it == back.end()) return false;
    *out += char(it->second);
    i += len;
  }
  return true;
}

}  // namespace shardlm
