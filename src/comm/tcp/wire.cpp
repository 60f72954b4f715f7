#include "comm/tcp/wire.h"

#include <cstring>


namespace shardlm::comm::tcp {

namespace {

template <class T>
void put(uint8_t* out, size_t offset, T value) {
  std::memcpy(out + offset, &value, sizeof value);
}
template <class T>
T get(const uint8_t* in, size_t offset) {
  T value;
  std::memcpy(&value, in + offset, sizeof value);
  return value;
}

void put_prefix(uint8_t* out, uint32_t version) {
  std::memcpy(out, kHelloMagic.data(), kHelloMagic.size());
  put<uint32_t>(out, 8, version);
  put<uint32_t>(out, 12, uint32_t(kHelloBytes));
}

}  // namespace

// ClientHello: [0,16) prefix, [16,24) group id, [24,32) session, [32,36) from, [36,40) to,
// [40,44) size, [44,48) zero, [48,64) nonce.
void encode(const ClientHello& h, uint8_t out[kHelloBytes]) {
  std::memset(out, 0, kHelloBytes);
  put_prefix(out, h.version);
  put<uint64_t>(out, 16, h.group_id);
  put<uint64_t>(out, 24, h.session);
  put<uint32_t>(out, 32, h.from_rank);
  put<uint32_t>(out, 36, h.to_rank);
  put<uint32_t>(out, 40, h.group_size);
  std::memcpy(out + 48, h.nonce.data(), h.nonce.size());
}

ClientHello decode_client_hello(const uint8_t in[kHelloBytes]) {
  ClientHello h;
  h.version = get<uint32_t>(in, 8);
  h.group_id = get<uint64_t>(in, 16);
  h.session = get<uint64_t>(in, 24);
  h.from_rank = get<uint32_t>(in, 32);
  h.to_rank = get<uint32_t>(in, 36);
  h.group_size = get<uint32_t>(in, 40);
  std::memcpy(h.nonce.data(), in + 48, h.nonce.size());
  return h;
}

// ServerHello: [0,16) prefix, [16,20) status, [20,24) rank, [24,32) group id, [32,64) nonce.
void encode(const ServerHello& h, uint8_t out[kHelloBytes]) {
  std::memset(out, 0, kHelloBytes);
  put_prefix(out, h.version);
  put<uint32_t>(out, 16, uint32_t(h.status));
  put<uint32_t>(out, 20, h.rank);
  put<uint64_t>(out, 24, h.group_id);
  std::memcpy(out + 32, h.nonce.data(), h.nonce.size());
}

ServerHello decode_server_hello(const uint8_t in[kHelloBytes]) {
  ServerHello h;
  h.version = get<uint32_t>(in, 8);
  h.status = HandshakeStatus(get<uint32_t>(in, 16));
  h.rank = get<uint32_t>(in, 20);
  h.group_id = get<uint64_t>(in, 24);
  std::memcpy(h.nonce.data(), in + 32, h.nonce.size());
  return h;
}

bool has_hello_magic(const uint8_t prefix[kHelloPrefixBytes]) {
  return std::memcmp(prefix, kHelloMagic.data(), kHelloMagic.size()) == 0;
}

uint32_t hello_version(const uint8_t prefix[kHelloPrefixBytes]) { return get<uint32_t>(prefix, 8); }

Digest connect_mac(const std::string& secret, const uint8_t server_nonce[kNonceBytes],
                   const uint8_t client_hello[kHelloBytes]) {
  HmacSha256 mac(secret.data(), secret.size());
  mac.update("shardlm-tcp-connect");
  mac.update(server_nonce, kNonceBytes);
  mac.update(client_hello, kHelloBytes);
  return mac.finish();
}

Digest accept_mac(const std::string& secret, const uint8_t client_hello[kHelloBytes],
                  const uint8_t server_hello[kHelloBytes]) {
  HmacSha256 mac(secret.data(), secret.size());
  mac.update("shardlm-tcp-accept");
  mac.update(client_hello, kHelloBytes);
  mac.update(server_hello, kHelloBytes);
  return mac.finish();
}

void encode_verdict(HandshakeStatus status, const Digest& mac, uint8_t out[kVerdictBytes]) {
  std::memset(out, 0, kVerdictBytes);
  put<uint32_t>(out, 0, uint32_t(status));
  std::memcpy(out + 8, mac.data(), mac.size());
}

HandshakeStatus verdict_status(const uint8_t in[kVerdictBytes]) { return HandshakeStatus(get<uint32_t>(in, 0)); }

void encode(const FrameHeader& h, uint8_t out[kFrameHeaderBytes]) {
  put<uint32_t>(out, 0, h.magic);
  put<uint32_t>(out, 4, h.seq);
  put<uint64_t>(out, 8, h.length);
}

FrameHeader decode_frame_header(const uint8_t in[kFrameHeaderBytes]) {
  return {get<uint32_t>(in, 0), get<uint32_t>(in, 4), get<uint64_t>(in, 8)};
}

uint64_t group_id_of(const std::string& topology, const std::vector<std::string>& endpoints) {
  Sha256 h;
  h.update("shardlm-tcp-group\n");
  h.update(topology);
  for (const auto& e : endpoints) {
    h.update("\n");
    h.update(e);
  }
  Digest d = h.finish();
  uint64_t id;
  std::memcpy(&id, d.data(), sizeof id);
  return id;
}

}  // namespace shardlm::comm::tcp
