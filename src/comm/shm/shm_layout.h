// Where everything lives inside the shared segment. All ranks compute the same Layout from the
// group size alone, so the segment needs no pointers: only offsets from its base.
//
// Fields shared between processes are plain integers accessed through std::atomic_ref, so there
// is no question of object lifetime in memory that another process created and zero-filled.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace shardlm::comm::shm {

// Two cache lines: AMD and Intel prefetch the adjacent line, so one line is not enough to keep
// two writers apart.
constexpr size_t kLine = 128;
constexpr uint64_t kMagic = 0x73686172646c6d31ull;  // "shardlm1"
constexpr uint32_t kVersion = 1;

struct alignas(kLine) SegmentHeader {
  uint64_t magic;  // stored (release) by the creator once everything else is set
  uint32_t version;
  int32_t size;  // ranks
  uint64_t total_bytes;
  uint32_t joined;       // ranks attached, size + 1 once unlinked; a futex word
  int32_t abandoned_by;  // 1 + rank that gave up the join (0: nobody)
  int32_t dead_rank;     // 1 + the first rank some rank found dead (0: none): fails every waiter fast
  int32_t creator_pid;
  int32_t abandoning;        // CAS 0 -> 1 by the rank that writes abandon_reason
  char abandon_reason[256];  // why the join was given up, published by abandoned_by
};

// One per rank: what others write to wake it, and its pid. Written rarely, read often.
struct alignas(kLine) RankWake {
  uint32_t doorbell;  // futex word: bumped by anyone who changed something this rank may wait on
  uint32_t sleeping;  // 1 while the rank is (about to be) blocked on its doorbell
  int32_t pid;        // 0 until the rank has claimed its place
};

// Where one rank is in the collectives of one group context; only that rank writes it.
// High 32 bits: barrier generation. Low 32 bits: what the rank is doing at that generation
// (2 bits of operation, 30 bits of bytes left in the call), so ranks that called different
// collectives, or the same with different sizes, get a CommError instead of mixed-up data.
struct alignas(kLine) Arrival {
  uint64_t word;
};

// A byte ring from one rank to another. head: bytes ever written (producer only); tail: bytes
// ever consumed (consumer only). Both grow forever; position in the ring is value % capacity.
struct RingControl {
  alignas(kLine) uint64_t head;
  alignas(kLine) uint64_t tail;
};

template <class T>
inline std::atomic_ref<T> atom(T& x) {
  return std::atomic_ref<T>(x);
}

struct Layout {
  int size = 1;
  size_t ring_bytes = 0;  // capacity of each ring, a power of two
  size_t slot_bytes = 0;  // one collective buffer; each rank has 2 per context
  int contexts = 0;       // groups (the root and native splits) a rank can be part of at once

  size_t ranks_offset = 0, arrivals_offset = 0, ring_controls_offset = 0, rings_offset = 0, slots_offset = 0;
  size_t total_bytes = 0;

  static Layout for_size(int size);

  int rings() const { return size * (size - 1); }
  // Rings exist only between distinct ranks: index over the n-1 peers of `from`.
  int ring_index(int from, int to) const { return from * (size - 1) + (to < from ? to : to - 1); }
  size_t arrival_index(int rank, int context) const { return size_t(rank) * size_t(contexts) + size_t(context); }
  size_t slot_offset(int rank, int context, int buffer) const {
    return slots_offset + ((size_t(rank) * size_t(contexts) + size_t(context)) * 2 + size_t(buffer)) * slot_bytes;
  }
};

}  // namespace shardlm::comm::shm
