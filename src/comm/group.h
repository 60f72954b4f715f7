// One interface for every link between ranks (DESIGN.md: "a backend is a folder"). The runtime
// talks only to Group; shm/, tcp/ and mpi/ implement it, and NCCL will be one more folder.
//
// Contract, for every backend:
// - send/recv are blocking and ordered per (sender, receiver) pair; a recv names the exact byte
//   count, and a message of another size is a protocol error, never a partial read.
// - Collectives are called by every rank of the group in the same order.
// - all_reduce results are bitwise identical on every rank (each element is summed in one
//   fixed order), so replicated tensor-parallel state never drifts between ranks.
// - Every wait is bounded by the group's timeout; a lost, silent or misbehaving peer raises
//   CommError naming that peer's rank (and host where known). Nothing hangs.
// - Destroying a group releases everything it holds: sockets, shared memory, threads.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/error.h"

namespace shardlm::comm {

// A failure of the link or of a peer. Derives from Error so the CLI prints it as one line.
struct CommError : Error {
  using Error::Error;
};

// Traffic of this rank through one group, for `generate --json` and `bench`.
struct CommStats {
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t messages_sent = 0;
  double seconds = 0;  // wall time spent inside Group calls (waiting included)
};

class Group {
 public:
  virtual ~Group() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "shm", "tcp-ring", "tcp-mesh", "mpi"; sub-groups report their parent's backend.
  virtual std::string backend() const = 0;

  virtual void send(int peer, const void* data, size_t bytes) = 0;
  virtual void recv(int peer, void* data, size_t bytes) = 0;
  // Sends to `to` while receiving from `from`, without deadlock whatever the sizes (both peers
  // may be sending to each other at once, as in every step of a ring).
  virtual void send_recv(int to, const void* send_data, size_t send_bytes, int from, void* recv_data,
                         size_t recv_bytes) = 0;

  // In place: data[i] = sum over ranks of data[i].
  virtual void all_reduce_sum(float* data, size_t count) = 0;
  // bf16 values (uint16 bit patterns); summed in f32, rounded to nearest even once at the end.
  virtual void all_reduce_sum_bf16(uint16_t* data, size_t count) = 0;
  // all[r * bytes ... (r+1) * bytes) = rank r's `mine`, for every rank r.
  virtual void all_gather(const void* mine, size_t bytes, void* all) = 0;
  virtual void barrier() = 0;

  // The ranks that pass the same color form a new group, ordered by key then by rank
  // (MPI_Comm_split). Every rank of this group must call it, in the same order as other calls.
  virtual std::unique_ptr<Group> split(int color, int key) = 0;

  virtual CommStats stats() const = 0;
  virtual void reset_stats() = 0;
};

// Default bound on any single wait. A slow rank (a long prefill chunk) must answer within it.
constexpr std::chrono::seconds kDefaultTimeout{60};

}  // namespace shardlm::comm
