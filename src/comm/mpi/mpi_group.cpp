#include "comm/mpi/mpi_group.h"

#include <fmt/format.h>
#include <unistd.h>

#include <array>
#include <climits>
#include <cstring>

#include "comm/mpi/mpi_comm_group.h"
#include "comm/mpi/mpi_requests.h"
#include "comm/mpi/mpi_runtime.h"

namespace shardlm::comm {

namespace {

using mpi::Clock;
using mpi::Pending;

// Fixed-size so that one MPI_Iallgather exchanges every rank's identity.
struct IdentityRecord {
  int32_t pid;
  char host[256];
  char pid_namespace[64];
};

IdentityRecord my_identity() {
  IdentityRecord record{};
  record.pid = int32_t(::getpid());
  if (::gethostname(record.host, sizeof record.host - 1) != 0) std::strcpy(record.host, "?");
  ssize_t n = ::readlink("/proc/self/ns/pid", record.pid_namespace, sizeof record.pid_namespace - 1);
  if (n < 0) record.pid_namespace[0] = 0;
  return record;
}

// Waits for one collective set up by the world's creation; there is no group to name peers yet.
void complete_setup(Pending& op, std::chrono::milliseconds timeout, const char* what, int world_size) {
  auto result = mpi::poll(std::span(&op, 1), Clock::now() + timeout, {});
  if (result == mpi::PollResult::done) return;
  mpi::abandon(std::span(&op, 1));
  std::string why = result == mpi::PollResult::failed
                        ? mpi::error_text(op.error)
                        : fmt::format("not every rank took part within {} ms", timeout.count());
  throw CommError(fmt::format("mpi: {} of the world of {} ranks: {}", what, world_size, why));
}

std::shared_ptr<const mpi::WorldPeers> gather_world_peers(MPI_Comm comm, std::chrono::milliseconds timeout) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  IdentityRecord mine = my_identity();
  std::vector<IdentityRecord> all(static_cast<size_t>(size));
  Pending op;
  int rc = MPI_Iallgather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, comm, &op.request);
  if (rc != MPI_SUCCESS) throw CommError("mpi: exchanging rank identities: " + mpi::error_text(rc));
  complete_setup(op, timeout, "exchanging rank identities", size);
  auto peers = std::make_shared<mpi::WorldPeers>();
  peers->my_world_rank = rank;
  for (IdentityRecord& record : all) {
    record.host[sizeof record.host - 1] = 0;
    record.pid_namespace[sizeof record.pid_namespace - 1] = 0;
    peers->by_world_rank.push_back({record.pid, record.host, record.pid_namespace});
  }
  return peers;
}

}  // namespace

std::unique_ptr<Group> make_mpi_world_group(std::chrono::milliseconds timeout) {
  mpi::ensure_initialized();
  int world_size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  // A duplicate, so that this group's messages never match those of another group or of the
  // program's own MPI use; it inherits the world's MPI_ERRORS_RETURN.
  MPI_Comm comm = MPI_COMM_NULL;
  Pending op;
  int rc = MPI_Comm_idup(MPI_COMM_WORLD, &comm, &op.request);
  if (rc != MPI_SUCCESS) throw CommError("mpi: duplicating MPI_COMM_WORLD: " + mpi::error_text(rc));
  complete_setup(op, timeout, "joining", world_size);
  try {
    auto peers = gather_world_peers(comm, timeout);
    return std::make_unique<mpi::MpiGroup>(comm, timeout, std::move(peers), true);
  } catch (...) {
    MPI_Comm_free(&comm);
    throw;
  }
}

}  // namespace shardlm::comm
