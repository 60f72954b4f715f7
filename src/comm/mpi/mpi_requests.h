// Bounded waiting on non-blocking MPI operations: MPI's own waits block forever when a peer is
// gone, so every call posts non-blocking operations and polls them against a deadline.
#pragma once
#include "comm/mpi/mpi_api.h"

#include <chrono>
#include <functional>
#include <span>

namespace shardlm::comm::mpi {

using Clock = std::chrono::steady_clock;

// A receive is posted only once its message is seen (MPI_Improbe) and found to have exactly the
// expected size: Open MPI 4.1 writes a truncated message past the end of the receive buffer
// when it travels by rendezvous (over ~4 KB, shared memory or TCP), so MPI_ERR_TRUNCATE cannot
// be relied on to protect memory.
struct ExpectedMessage {
  void* data = nullptr;
  int count = 0;
  MPI_Datatype type = MPI_BYTE;
  size_t bytes = 0;
  int source = 0;
  int tag = 0;
  MPI_Comm comm = MPI_COMM_NULL;
};

struct Pending {
  enum class Kind { send, unseen_recv, recv, collective };
  MPI_Request request = MPI_REQUEST_NULL;
  Kind kind = Kind::collective;
  MPI_Status status{};
  int error = MPI_SUCCESS;  // the operation's error code once it failed
  ExpectedMessage expected;  // for unseen_recv
  long long arrived_bytes = -1;  // set when a message of the wrong size arrived instead
};

enum class PollResult { done, failed, timed_out, peer_gone };

// Tests the operations until all completed, one failed (its `error` or `arrived_bytes` is set), the deadline
// passed, or `peer_gone` (asked about twice a second once the wait is long) reports a lost peer.
// It spins for the first microseconds, so a wait is fast when ranks <= cores, then yields, then
// sleeps in short steps, so ranks that outnumber cores leave the core to the peer they wait for.
PollResult poll(std::span<Pending> ops, Clock::time_point deadline, const std::function<bool()>& peer_gone);

// After a failure: cancels receives that have not matched yet, gives the rest a moment to
// finish, and leaves what still runs to MPI (noted for exit, see mpi_runtime.h). The buffers
// of an abandoned operation may still be touched by MPI; the caller marks its group unusable,
// and the runtime exits on CommError.
// Returns how many collective operations were left running.
int abandon(std::span<Pending> ops);

}  // namespace shardlm::comm::mpi
