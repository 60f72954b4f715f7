// Bytes on the wire of the tcp backend: the handshake that opens every connection and the header
// of every message after it. Little-endian, fixed sizes; kTcpProtocolVersion (tcp_group.h) changes
// with any of it.
//
// Handshake (C = connecting rank, A = accepting rank):
//   C -> A  ClientHello   magic, version, group id, session, from/to rank, group size, C's nonce
//   A -> C  ServerHello   magic, version, status, group id, A's rank, A's nonce
//   C -> A  Auth          HMAC(secret, "connect" || A's nonce || ClientHello)
//   A -> C  Verdict       status, HMAC(secret, "accept" || ClientHello || ServerHello)
// The first 16 bytes of both hellos (magic, version, length) never change between versions, so
// each side can name the other's version before parsing anything else.
#pragma once
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/tcp/sha256.h"

namespace shardlm::comm::tcp {

static_assert(std::endian::native == std::endian::little, "the wire format is written with memcpy");

constexpr std::array<uint8_t, 8> kHelloMagic = {'s', 'h', 'a', 'r', 'd', 'l', 'm', 'T'};
constexpr size_t kHelloPrefixBytes = 16;  // magic, version, hello length
constexpr size_t kHelloBytes = 64;
constexpr size_t kAuthBytes = 32;
constexpr size_t kVerdictBytes = 40;
constexpr size_t kNonceBytes = 32;
constexpr size_t kClientNonceBytes = 16;

// ServerHello and Verdict status.
enum class HandshakeStatus : uint32_t {
  ok = 0,
  version_mismatch = 1,
  other_group = 2,   // another endpoint list or topology
  wrong_rank = 3,    // C asked for a rank that A is not, or named an impossible rank
  retry_later = 4,   // A is not ready for this connection yet (or has one from C already)
  wrong_secret = 5,
};

struct ClientHello {
  uint32_t version = 0;
  uint64_t group_id = 0;
  uint64_t session = 0;  // 0 while the group forms; afterwards the group's session id
  uint32_t from_rank = 0;
  uint32_t to_rank = 0;
  uint32_t group_size = 0;
  std::array<uint8_t, kClientNonceBytes> nonce{};
};

struct ServerHello {
  uint32_t version = 0;
  HandshakeStatus status = HandshakeStatus::ok;
  uint64_t group_id = 0;
  uint32_t rank = 0;
  std::array<uint8_t, kNonceBytes> nonce{};
};

void encode(const ClientHello& h, uint8_t out[kHelloBytes]);
ClientHello decode_client_hello(const uint8_t in[kHelloBytes]);
void encode(const ServerHello& h, uint8_t out[kHelloBytes]);
ServerHello decode_server_hello(const uint8_t in[kHelloBytes]);

// Checks the 16-byte prefix of a hello; false when the magic is wrong (not our protocol at all).
bool has_hello_magic(const uint8_t prefix[kHelloPrefixBytes]);
uint32_t hello_version(const uint8_t prefix[kHelloPrefixBytes]);

Digest connect_mac(const std::string& secret, const uint8_t server_nonce[kNonceBytes],
                   const uint8_t client_hello[kHelloBytes]);
Digest accept_mac(const std::string& secret, const uint8_t client_hello[kHelloBytes],
                  const uint8_t server_hello[kHelloBytes]);

void encode_verdict(HandshakeStatus status, const Digest& mac, uint8_t out[kVerdictBytes]);
HandshakeStatus verdict_status(const uint8_t in[kVerdictBytes]);

// Every message after the handshake starts with this header. The magic says what follows.
constexpr uint32_t kDataMagic = 0x444d4c53;     // "SLMD": `length` payload bytes for a recv
constexpr uint32_t kGoodbyeMagic = 0x474d4c53;  // "SLMG": the sender destroyed its group normally
constexpr uint32_t kAbortMagic = 0x414d4c53;    // "SLMA": the sender failed; payload = the reason
constexpr size_t kFrameHeaderBytes = 16;
constexpr size_t kMaxAbortMessageBytes = 1024;

struct FrameHeader {
  uint32_t magic = 0;
  uint32_t seq = 0;  // per connection and direction; catches lost or duplicated frames
  uint64_t length = 0;
};

void encode(const FrameHeader& h, uint8_t out[kFrameHeaderBytes]);
FrameHeader decode_frame_header(const uint8_t in[kFrameHeaderBytes]);

// Stable id of a group configuration: every rank computes the same value from its options.
uint64_t group_id_of(const std::string& topology, const std::vector<std::string>& endpoints);

}  // namespace shardlm::comm::tcp
