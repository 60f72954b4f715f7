// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), enough to authenticate tcp connections with
// the cluster secret without depending on OpenSSL.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace shardlm::comm::tcp {

using Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t bytes);
  void update(std::string_view s) { update(s.data(), s.size()); }
  Digest finish();  // the object must not be used afterwards

 private:
  void compress(const uint8_t block[64]);
  uint32_t state_[8];
  uint8_t block_[64];
  size_t block_used_ = 0;
  uint64_t total_bytes_ = 0;
};

Digest sha256(const void* data, size_t bytes);

// Incremental HMAC: feed the message in pieces (nonces, ranks ...) without concatenating them.
class HmacSha256 {
 public:
  HmacSha256(const void* key, size_t key_bytes);
  void update(const void* data, size_t bytes) { inner_.update(data, bytes); }
  void update(std::string_view s) { inner_.update(s); }
  Digest finish();

 private:
  Sha256 inner_;
  uint8_t outer_key_[64];
};

Digest hmac_sha256(const void* key, size_t key_bytes, const void* data, size_t bytes);

// Compares without an early exit, so the time taken says nothing about where a forged MAC differs.
bool equal_in_constant_time(const void* a, const void* b, size_t bytes);

}  // namespace shardlm::comm::tcp
