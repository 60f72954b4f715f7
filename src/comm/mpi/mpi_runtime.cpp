#include "comm/mpi/mpi_runtime.h"

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "comm/group.h"
#include "comm/mpi/mpi_group.h"

namespace shardlm::comm {

namespace {

// mpirun (ORTE/PRRTE) sets OMPI_COMM_WORLD_SIZE; srun --mpi=pmix and prterun set PMIX_RANK.
bool launcher_in_environment() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr;
}

// Read before MPI_Init, because Open MPI's singleton init sets the same variables.
std::atomic<int> launched_at_init{-1};

}  // namespace

bool launched_by_mpirun() {
  if (launched_at_init >= 0) return launched_at_init == 1;
  return launcher_in_environment();
}

namespace mpi {

namespace {

std::mutex state_mutex;
std::vector<MPI_Request> abandoned_collectives;
std::vector<MPI_Comm> abandoned_communicators;
int abandoned_point_to_point = 0;
std::chrono::milliseconds finalize_limit{10'000};
bool a_group_failed = false;
constexpr std::chrono::milliseconds kFinalizeLimitAfterFailure{5'000};

bool abandoned_all_finished(std::chrono::milliseconds grace) {
  std::lock_guard lock(state_mutex);
  if (abandoned_point_to_point > 0) return false;
  const auto deadline = std::chrono::steady_clock::now() + grace;
  for (;;) {
    bool all_done = true;
    for (MPI_Request& request : abandoned_collectives) {
      if (request == MPI_REQUEST_NULL) continue;
      int done = 0;
      if (MPI_Test(&request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) done = 1;
      if (!done) all_done = false;
    }
    if (all_done) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (!abandoned_all_finished(std::chrono::milliseconds(1000))) {
    std::fprintf(stderr, "shardlm: leaving without MPI_Finalize: MPI operations of a failed group never finished\n");
    return;
  }
  for (MPI_Comm& comm : abandoned_communicators) MPI_Comm_free(&comm);
  std::mutex mutex;
  std::condition_variable finished_cv;
  bool finished = false;
  std::chrono::milliseconds limit;
  {
    std::lock_guard lock(state_mutex);
    limit = a_group_failed ? std::min(finalize_limit, kFinalizeLimitAfterFailure) : finalize_limit;
  }
  std::thread watchdog([&] {
    std::unique_lock lock(mutex);
    if (finished_cv.wait_for(lock, limit, [&] { return finished; })) return;
    std::fprintf(stderr, "shardlm: MPI_Finalize did not return within %lld ms (a rank is gone or hung); exiting\n",
                 static_cast<long long>(limit.count()));
    std::fflush(stderr);
    ::_exit(1);
  });
  MPI_Finalize();
  {
    std::lock_guard lock(mutex);
    finished = true;
  }
  finished_cv.notify_one();
  watchdog.join();
}

}  // namespace

void ensure_initialized() {
  std::lock_guard lock(state_mutex);
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) throw CommError("mpi: MPI was already finalized in this process; no new group can be made");
  if (initialized) {
    // The program started MPI itself (or an earlier call did): it owns finalization, but our
    // waits still need error codes instead of the default abort.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    return;
  }
  launched_at_init = launcher_in_environment() ? 1 : 0;
  int provided = 0;
  int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
  if (rc != MPI_SUCCESS) throw CommError("mpi: MPI_Init_thread failed: " + error_text(rc));
  if (provided < MPI_THREAD_FUNNELED)
    throw CommError("mpi: this MPI library offers no thread support (MPI_THREAD_SINGLE); shardlm needs FUNNELED");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
  std::atexit(finalize_at_exit);
}

bool is_active() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

std::string error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, size_t(length));
}

void note_abandoned_collective(MPI_Request request) {
  std::lock_guard lock(state_mutex);
  abandoned_collectives.push_back(request);
}

void note_abandoned_communicator(MPI_Comm comm) {
  std::lock_guard lock(state_mutex);
  abandoned_communicators.push_back(comm);
}

void note_abandoned_point_to_point() {
  std::lock_guard lock(state_mutex);
  ++abandoned_point_to_point;
}

void note_group_failed() {
  std::lock_guard lock(state_mutex);
  a_group_failed = true;
}

void note_group_timeout(std::chrono::milliseconds timeout) {
  std::lock_guard lock(state_mutex);
  finalize_limit = std::max(finalize_limit, timeout);
}

}  // namespace mpi
}  // namespace shardlm::comm
