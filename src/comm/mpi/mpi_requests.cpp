#include "comm/mpi/mpi_requests.h"

#include <sched.h>

#include <climits>
#include <thread>

#include "comm/mpi/mpi_runtime.h"

namespace shardlm::comm::mpi {

namespace {

constexpr auto kSpin = std::chrono::microseconds(50);
constexpr auto kYield = std::chrono::milliseconds(2);
constexpr auto kFirstSleep = std::chrono::microseconds(20);
constexpr auto kLongestSleep = std::chrono::microseconds(200);
constexpr auto kLivenessPeriod = std::chrono::milliseconds(500);
constexpr auto kAbandonGrace = std::chrono::milliseconds(200);

constexpr long long kLargestDrainedMessage = 64ll << 20;

// Receives a message of the wrong size into scratch memory, so that its sender completes and
// only this side reports the error. Scratch that MPI still holds after a moment is leaked.
void drain(MPI_Message& message, long long bytes) {
  if (bytes > kLargestDrainedMessage || bytes > INT_MAX) return;
  auto* scratch = new char[size_t(bytes) + 1];
  MPI_Request request = MPI_REQUEST_NULL;
  if (MPI_Imrecv(scratch, int(bytes), MPI_BYTE, &message, &request) != MPI_SUCCESS) {
    delete[] scratch;
    return;
  }
  const auto deadline = Clock::now() + kAbandonGrace;
  int done = 0;
  while (MPI_Test(&request, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && !done && Clock::now() < deadline)
    sched_yield();
  if (done) {
    delete[] scratch;
  } else {
    MPI_Request_free(&request);
    note_abandoned_point_to_point();
  }
}

// Posts an unseen receive once its message has arrived; false when it has the wrong size.
bool match_message(Pending& op, bool& all_done) {
  const ExpectedMessage& e = op.expected;
  int found = 0;
  MPI_Message message;
  int rc = MPI_Improbe(e.source, e.tag, e.comm, &found, &message, &op.status);
  if (rc != MPI_SUCCESS) {
    op.error = rc;
    return false;
  }
  if (!found) {
    all_done = false;
    return true;
  }
  MPI_Count bytes = 0;
  MPI_Get_elements_x(&op.status, MPI_BYTE, &bytes);
  if (bytes != MPI_Count(e.bytes)) {
    op.arrived_bytes = bytes;
    drain(message, bytes);
    return false;
  }
  rc = MPI_Imrecv(e.data, e.count, e.type, &message, &op.request);
  if (rc != MPI_SUCCESS) {
    op.error = rc;
    return false;
  }
  op.kind = Pending::Kind::recv;
  all_done = false;
  return true;
}

// Tests each unfinished operation once; false when one failed.
bool test_each(std::span<Pending> ops, bool& all_done) {
  all_done = true;
  for (auto& op : ops) {
    if (op.kind == Pending::Kind::unseen_recv) {
      if (!match_message(op, all_done)) return false;
      continue;
    }
    if (op.request == MPI_REQUEST_NULL) continue;
    int done = 0;
    int rc = MPI_Test(&op.request, &done, &op.status);
    if (rc != MPI_SUCCESS) {
      op.error = rc;
      return false;
    }
    if (!done) all_done = false;
  }
  return true;
}

}  // namespace

PollResult poll(std::span<Pending> ops, Clock::time_point deadline, const std::function<bool()>& peer_gone) {
  const auto start = Clock::now();
  auto next_liveness_check = start + kLivenessPeriod;
  auto sleep = kFirstSleep;
  for (;;) {
    bool all_done = false;
    if (!test_each(ops, all_done)) return PollResult::failed;
    if (all_done) return PollResult::done;
    const auto now = Clock::now();
    if (now >= deadline) return PollResult::timed_out;
    if (now - start < kSpin) continue;
    if (now - start < kYield) {
      sched_yield();
      continue;
    }
    if (now >= next_liveness_check) {
      if (peer_gone && peer_gone()) return PollResult::peer_gone;
      next_liveness_check = now + kLivenessPeriod;
    }
    std::this_thread::sleep_for(sleep);
    sleep = std::min(sleep * 2, kLongestSleep);
  }
}

int abandon(std::span<Pending> ops) {
  int collectives_left = 0;
  for (auto& op : ops)
    if (op.request != MPI_REQUEST_NULL && op.kind == Pending::Kind::recv) MPI_Cancel(&op.request);
  const auto deadline = Clock::now() + kAbandonGrace;
  for (;;) {
    bool all_done = true;
    for (auto& op : ops) {
      if (op.request == MPI_REQUEST_NULL) continue;
      int done = 0;
      // A failed or cancelled operation also counts as finished here.
      if (MPI_Test(&op.request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || done) continue;
      all_done = false;
    }
    if (all_done || Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (auto& op : ops) {
    if (op.request == MPI_REQUEST_NULL) continue;
    // Point-to-point requests may be freed while active (MPI completes them on its own);
    // collective ones may not, so those are kept to be tested again at exit.
    if (op.kind == Pending::Kind::collective) {
      note_abandoned_collective(op.request);
      ++collectives_left;
    } else {
      MPI_Request_free(&op.request);
      note_abandoned_point_to_point();
    }
    op.request = MPI_REQUEST_NULL;
  }
  return collectives_left;
}

}  // namespace shardlm::comm::mpi
