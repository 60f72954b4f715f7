#include "comm/shm/shm_wait.h"

#include <errno.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <climits>

namespace shardlm::comm::shm {

void futex_wait(uint32_t* word, uint32_t expected, std::chrono::nanoseconds timeout) {
  if (timeout.count() <= 0) return;
  timespec ts{time_t(timeout.count() / 1000000000), long(timeout.count() % 1000000000)};
  // EAGAIN (value already changed), EINTR and ETIMEDOUT all mean: look again.
  ::syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, nullptr, 0);
}

void futex_wake_all(uint32_t* word) { ::syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0); }

bool process_exists(int pid) { return pid > 0 && (::kill(pid, 0) == 0 || errno != ESRCH); }

PeerWatch::PeerWatch(const std::vector<int32_t>& pids, int self)
    : pids_(pids), pidfds_(pids.size(), -1), gone_at_start_(pids.size(), false) {
#ifdef SYS_pidfd_open
  for (size_t r = 0; r < pids_.size(); ++r) {
    if (int(r) == self) continue;
    int fd = int(::syscall(SYS_pidfd_open, pids_[r], 0));
    if (fd >= 0)
      pidfds_[r] = fd;
    else if (errno == ESRCH)
      gone_at_start_[r] = true;  // already finished (legitimately, if it never owes us anything)
  }
#endif
}

PeerWatch::~PeerWatch() {
  for (int fd : pidfds_)
    if (fd >= 0) ::close(fd);
}

bool PeerWatch::alive(int rank) const {
  if (gone_at_start_[size_t(rank)]) return false;
  int fd = pidfds_[size_t(rank)];
  if (fd < 0) return process_exists(pids_[size_t(rank)]);
  pollfd p{fd, POLLIN, 0};
  // A pidfd polls readable once the process has exited, zombie or not.
  return ::poll(&p, 1, 0) == 0;
}

void WaitContext::sched_yield_once() { ::sched_yield(); }

int WaitContext::find_dead(const std::vector<int>& pending, bool* reported_by_other) const {
  for (int r : pending)
    if (r != self && !peers->alive(r)) {
      *reported_by_other = false;
      int expected = 0;
      atom(header->dead_rank).compare_exchange_strong(expected, r + 1);
      return r;
    }
  int dead = atom(header->dead_rank).load(std::memory_order_acquire) - 1;
  if (dead >= 0 && dead != self) {
    *reported_by_other = true;
    return dead;
  }
  return -1;
}

void WaitContext::fail_dead(int rank, const char* what, bool reported_by_other) const {
  throw CommError(fmt::format("shm group '{}': rank {} (pid {}) exited{}; rank {} was waiting for it to {}",
                              *group_name, rank, peers->pid(rank), reported_by_other ? " (found by another rank)" : "",
                              self, what));
}

void WaitContext::fail_timeout(const std::vector<int>& pending, const char* what) const {
  throw CommError(fmt::format("shm group '{}': rank {} timed out after {} ms waiting for rank{} {} to {}", *group_name,
                              self, timeout.count(), pending.size() == 1 ? "" : "s", fmt::join(pending, ", "), what));
}

}  // namespace shardlm::comm::shm
