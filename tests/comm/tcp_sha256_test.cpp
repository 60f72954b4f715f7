// SHA-256 and HMAC-SHA256 of the tcp handshake against the published test vectors
// (FIPS 180-4 examples, RFC 4231 test cases 1-7).
#include <gtest/gtest.h>

#include <string>

#include "comm/tcp/sha256.h"

namespace shardlm::comm::tcp {
namespace {

std::string hex(const Digest& d, size_t bytes = 32) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < bytes; ++i) {
    s += digits[d[i] >> 4];
    s += digits[d[i] & 15];
  }
  return s;
}

std::string unhex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i < h.size(); i += 2) out += char(std::stoi(h.substr(i, 2), nullptr, 16));
  return out;
}

Digest sha(const std::string& s) { return sha256(s.data(), s.size()); }

TEST(TcpSha256, FipsExamples) {
  EXPECT_EQ(hex(sha("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hex(sha("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex(sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(hex(sha("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
                    "mnopqrstnopqrstu")),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

TEST(TcpSha256, MillionAsFedInUnevenPieces) {
  Sha256 h;
  std::string chunk(997, 'a');  // not a multiple of the 64-byte block
  size_t left = 1'000'000;
  while (left > 0) {
    size_t n = std::min(left, chunk.size());
    h.update(chunk.data(), n);
    left -= n;
  }
  EXPECT_EQ(hex(h.finish()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(TcpSha256, PaddingBoundaries) {
  // 55, 56 and 64 bytes put the length field in the same block, the next one, and after a full block.
  EXPECT_EQ(hex(sha(std::string(55, 'a'))), "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
  EXPECT_EQ(hex(sha(std::string(56, 'a'))), "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
  EXPECT_EQ(hex(sha(std::string(64, 'a'))), "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
}

struct HmacCase {
  std::string key, data, mac;
  size_t mac_bytes = 32;
};

TEST(TcpHmacSha256, Rfc4231) {
  const HmacCase cases[] = {
      {std::string(20, '\x0b'), "Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
      {"Jefe", "what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
      {std::string(20, '\xaa'), std::string(50, '\xdd'), "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
      {unhex("0102030405060708090a0b0c0d0e0f10111213141516171819"), std::string(50, '\xcd'),
       "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
      {std::string(20, '\x0c'), "Test With Truncation", "a3b6167473100ee06e0c796c2955552b", 16},
      {std::string(131, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First",
       "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
      {std::string(131, '\xaa'),
       "This is a test using a larger than block-size key and a larger than block-size data. The key needs to be "
       "hashed before being used by the HMAC algorithm.",
       "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
  };
  int number = 1;
  for (const auto& c : cases) {
    Digest mac = hmac_sha256(c.key.data(), c.key.size(), c.data.data(), c.data.size());
    EXPECT_EQ(hex(mac, c.mac_bytes), c.mac) << "RFC 4231 test case " << number;
    HmacSha256 pieces(c.key.data(), c.key.size());  // same MAC when the message comes in parts
    pieces.update(c.data.substr(0, c.data.size() / 3));
    pieces.update(c.data.substr(c.data.size() / 3));
    EXPECT_EQ(hex(pieces.finish(), c.mac_bytes), c.mac) << "RFC 4231 test case " << number << " in pieces";
    ++number;
  }
}

TEST(TcpHmacSha256, ConstantTimeCompare) {
  uint8_t a[32] = {}, b[32] = {};
  EXPECT_TRUE(equal_in_constant_time(a, b, 32));
  b[31] = 1;
  EXPECT_FALSE(equal_in_constant_time(a, b, 32));
  b[31] = 0;
  b[0] = 0x80;
  EXPECT_FALSE(equal_in_constant_time(a, b, 32));
  EXPECT_TRUE(equal_in_constant_time(a, b, 0));
}

}  // namespace
}  // namespace shardlm::comm::tcp
