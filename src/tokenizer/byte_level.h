// GPT-2's byte-level alphabet: every byte maps to one printable code point so that BPE vocab
// entries are valid UTF-8 strings ("Ġ" is the space byte 0x20).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace shardlm {

// The UTF-8 encoding of the code point that stands for byte b.
const std::string& byte_to_unicode(uint8_t b);
// Turns raw bytes into their byte-level string.
std::string bytes_to_byte_level(std::string_view bytes);
// Turns a byte-level string back into raw bytes; false if it holds a code point outside the alphabet.
bool byte_level_to_bytes(std::string_view text, std::string* out);

}  // namespace shardlm
