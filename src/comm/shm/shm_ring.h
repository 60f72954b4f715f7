// Messages through a single-producer/single-consumer byte ring in shared memory. A message is a
// 16-byte header (length, sequence, context) followed by its bytes; either side moves at most
// kPublishBytes per step, so a message larger than the ring streams through it while the other
// side copies, and a send_recv can alternate between its two directions without deadlock.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "comm/shm/shm_layout.h"

namespace shardlm::comm::shm {

constexpr size_t kPublishBytes = size_t(32) << 10;

struct MessageHeader {
  uint64_t length;
  uint32_t sequence;  // per ordered pair of ranks: catches a lost or duplicated message
  uint32_t context;   // the sender's context of the group it sent in: catches mixed-up groups
};
static_assert(sizeof(MessageHeader) == 16);

// One process's end of one ring: the shared control and data, and the last seen position of the
// other end (so most steps read no cache line that the other process writes).
struct RingEnd {
  RingControl* control = nullptr;
  uint8_t* data = nullptr;
  size_t capacity = 0;  // power of two
  uint64_t seen_other = 0;

  void copy_in(uint64_t pos, const uint8_t* src, size_t n) const {
    size_t at = size_t(pos) & (capacity - 1), first = std::min(n, capacity - at);
    std::memcpy(data + at, src, first);
    std::memcpy(data, src + first, n - first);
  }
  void copy_out(uint64_t pos, uint8_t* dst, size_t n) const {
    size_t at = size_t(pos) & (capacity - 1), first = std::min(n, capacity - at);
    std::memcpy(dst, data + at, first);
    std::memcpy(dst + first, data, n - first);
  }
  // Producer side: is there room for at least one byte?
  bool has_room() const {
    return atom(control->head).load(std::memory_order_relaxed) - atom(control->tail).load(std::memory_order_acquire) <
           capacity;
  }
  // Consumer side: is there at least one byte?
  bool has_data() const {
    return atom(control->head).load(std::memory_order_acquire) != atom(control->tail).load(std::memory_order_relaxed);
  }
};

struct SendOp {
  MessageHeader header;
  const uint8_t* payload;
  size_t done = 0;  // bytes of header + payload already in the ring
  size_t total() const { return sizeof(MessageHeader) + header.length; }
  bool finished() const { return done == total(); }
};

// Moves the next piece of `op` into the ring; false if the ring was full. The caller then wakes
// the consumer (the head store is seq_cst so that it reads the consumer's `sleeping` after it).
inline bool step_send(RingEnd& ring, SendOp& op) {
  const uint64_t head = atom(ring.control->head).load(std::memory_order_relaxed);
  const size_t remaining = op.total() - op.done;
  size_t room = ring.capacity - size_t(head - ring.seen_other);
  if (room < std::min(remaining, kPublishBytes)) {
    ring.seen_other = atom(ring.control->tail).load(std::memory_order_acquire);
    room = ring.capacity - size_t(head - ring.seen_other);
    if (room == 0) return false;
  }
  const size_t n = std::min({room, remaining, kPublishBytes});
  size_t written = 0;
  if (op.done < sizeof(MessageHeader)) {
    size_t k = std::min(n, sizeof(MessageHeader) - op.done);
    ring.copy_in(head, reinterpret_cast<const uint8_t*>(&op.header) + op.done, k);
    written = k;
  }
  if (written < n) {
    size_t payload_at = op.done + written - sizeof(MessageHeader);
    ring.copy_in(head + written, op.payload + payload_at, n - written);
  }
  op.done += n;
  atom(ring.control->head).store(head + n, std::memory_order_seq_cst);
  return true;
}

struct RecvOp {
  MessageHeader expected;  // length, sequence and context this receiver is waiting for
  uint8_t* payload;
  MessageHeader got{};
  size_t header_done = 0;
  size_t done = 0;  // payload bytes received
  bool finished() const { return header_done == sizeof(MessageHeader) && done == expected.length; }
};

// Takes the next piece of `op` out of the ring; false if it was empty. check_header(got) runs
// once the header is complete and throws if it is not the expected message.
template <class CheckHeader>
inline bool step_recv(RingEnd& ring, RecvOp& op, CheckHeader&& check_header) {
  const uint64_t tail = atom(ring.control->tail).load(std::memory_order_relaxed);
  size_t available = size_t(ring.seen_other - tail);
  if (available == 0) {
    ring.seen_other = atom(ring.control->head).load(std::memory_order_acquire);
    available = size_t(ring.seen_other - tail);
    if (available == 0) return false;
  }
  available = std::min(available, kPublishBytes);
  size_t taken = 0;
  if (op.header_done < sizeof(MessageHeader)) {
    size_t k = std::min(available, sizeof(MessageHeader) - op.header_done);
    ring.copy_out(tail, reinterpret_cast<uint8_t*>(&op.got) + op.header_done, k);
    op.header_done += k;
    taken = k;
    if (op.header_done == sizeof(MessageHeader)) check_header(op.got);
  }
  if (op.header_done == sizeof(MessageHeader)) {
    size_t k = std::min(available - taken, size_t(op.expected.length) - op.done);
    if (k) ring.copy_out(tail + taken, op.payload + op.done, k);
    op.done += k;
    taken += k;
  }
  atom(ring.control->tail).store(tail + taken, std::memory_order_seq_cst);
  return true;
}

}  // namespace shardlm::comm::shm
