// Waiting in shared memory: spin briefly (fast when every rank has a core), then yield (when
// ranks outnumber cores the peer needs this core), then block on this rank's futex doorbell.
// While blocked, every kCheckPeriod it checks that the ranks it waits on still exist, so a
// killed peer becomes a CommError naming it instead of a hang.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/group.h"
#include "comm/shm/shm_layout.h"

namespace shardlm::comm::shm {

using Clock = std::chrono::steady_clock;

// The spin budget adapts: halved when a spin ends without the event (ranks outnumber cores, or
// the peer is busy computing), doubled when it succeeds, between these bounds.
constexpr auto kSpinMin = std::chrono::microseconds(2);
constexpr auto kSpinMax = std::chrono::microseconds(50);
constexpr auto kYieldTime = std::chrono::microseconds(300);
constexpr auto kCheckPeriod = std::chrono::milliseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Process-shared futex (the segment is MAP_SHARED between processes, so no PRIVATE flag).
// Returns when woken, on timeout, or at once if *word != expected.
void futex_wait(uint32_t* word, uint32_t expected, std::chrono::nanoseconds timeout);
void futex_wake_all(uint32_t* word);

// Whether a process exists; used during the join, before pidfds are open.
bool process_exists(int pid);

// Liveness of the peers of one rank after the join. pidfds (where the kernel allows them) see
// an exited process even before its parent reaps it, and never confuse it with a reused pid.
class PeerWatch {
 public:
  PeerWatch(const std::vector<int32_t>& pids, int self);
  ~PeerWatch();
  PeerWatch(const PeerWatch&) = delete;
  PeerWatch& operator=(const PeerWatch&) = delete;
  bool alive(int rank) const;
  int pid(int rank) const { return pids_[size_t(rank)]; }

 private:
  std::vector<int32_t> pids_;
  std::vector<int> pidfds_;  // -1: none (self, or pidfd_open unavailable: then kill(pid, 0))
  std::vector<bool> gone_at_start_;
};

// What a rank needs to block and to be woken: its own doorbell, the segment header (to learn
// quickly when any rank found a dead peer) and the peers' liveness.
struct WaitContext {
  SegmentHeader* header;
  RankWake* wakes;  // all ranks'
  int self;
  const PeerWatch* peers;
  std::chrono::milliseconds timeout;
  const std::string* group_name;
  mutable Clock::duration spin = kSpinMax;

  // Wakes `rank` if it is blocked. Call after a seq_cst store of whatever it may wait on.
  void wake(int rank) const {
    RankWake& w = wakes[rank];
    if (atom(w.sleeping).load(std::memory_order_seq_cst)) {
      atom(w.doorbell).fetch_add(1, std::memory_order_seq_cst);
      futex_wake_all(&w.doorbell);
    }
  }

  // Returns once ready() is true. pending() lists the ranks (global) still awaited, for the
  // liveness checks and the error message; `what` is what they have yet to do ("send a message").
  template <class Ready, class Pending>
  void wait(Ready&& ready, Pending&& pending, const char* what) const {
    if (ready()) return;
    const auto start = Clock::now();
    for (unsigned i = 1;; ++i) {
      cpu_relax();
      if (ready()) {
        spin = std::min<Clock::duration>(spin * 2, kSpinMax);
        return;
      }
      if ((i & 15) == 0 && Clock::now() - start > spin) break;
    }
    spin = std::max<Clock::duration>(spin / 2, kSpinMin);
    while (Clock::now() - start < kYieldTime) {
      sched_yield_once();
      if (ready()) return;
    }
    block(ready, pending, what, start);
  }

 private:
  static void sched_yield_once();
  // Throws the CommError for a dead or silent peer (after ready() was seen false).
  [[noreturn]] void fail_dead(int rank, const char* what, bool reported_by_other) const;
  [[noreturn]] void fail_timeout(const std::vector<int>& pending, const char* what) const;
  // The first of `pending` that no longer exists, or -1; also picks up a death another rank found.
  int find_dead(const std::vector<int>& pending, bool* reported_by_other) const;

  template <class Ready, class Pending>
  void block(Ready& ready, Pending& pending, const char* what, Clock::time_point start) const {
    RankWake& me = wakes[self];
    const auto deadline = start + timeout;
    auto last_check = start;
    for (;;) {
      // Dekker with every waker: it stores its change then reads `sleeping`; this stores
      // `sleeping` then reads the change (in ready()), so at least one of the two sees the other.
      atom(me.sleeping).store(1, std::memory_order_seq_cst);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      const uint32_t bell = atom(me.doorbell).load(std::memory_order_seq_cst);
      if (ready()) break;
      const auto now = Clock::now();
      if (now - last_check >= kCheckPeriod || now >= deadline) {
        last_check = now;
        std::vector<int> waiting_for = pending();
        bool other = false;
        int dead = find_dead(waiting_for, &other);
        if (dead >= 0) {
          atom(me.sleeping).store(0, std::memory_order_relaxed);
          if (ready()) return;  // it finished its part just before exiting
          fail_dead(dead, what, other);
        }
        if (now >= deadline) {
          atom(me.sleeping).store(0, std::memory_order_relaxed);
          if (ready()) return;
          fail_timeout(waiting_for, what);
        }
      }
      auto slice = std::min<Clock::duration>(kCheckPeriod, deadline - now);
      futex_wait(&me.doorbell, bell, std::chrono::duration_cast<std::chrono::nanoseconds>(slice));
    }
    atom(me.sleeping).store(0, std::memory_order_relaxed);
  }
};

}  // namespace shardlm::comm::shm
