#include "comm/shm/shm_segment.h"

#include <errno.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <thread>

#include "comm/group.h"
#include "comm/shm/shm_wait.h"

namespace shardlm::comm::shm {

namespace {

constexpr size_t kPage = 4096;
constexpr int kMaxRanks = 64;
inline size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

}  // namespace

Layout Layout::for_size(int size) {
  Layout l;
  l.size = size;
  // 1 MiB rings per pair, smaller for big groups so 8 ranks stay around 45 MiB in all (messages
  // larger than a ring stream through it in pieces anyway).
  const size_t pairs = size_t(size) * size_t(size - 1);
  l.ring_bytes = size_t(1) << 20;
  while (l.ring_bytes > (size_t(64) << 10) && l.ring_bytes * pairs > (size_t(32) << 20)) l.ring_bytes /= 2;
  // Big enough that a decode all_reduce (up to ~28 KB) is one chunk, small enough to stay in L2.
  l.slot_bytes = size_t(256) << 10;
  l.contexts = 4;  // the root group and three native splits (e.g. TP and PP groups)
  size_t at = round_up(sizeof(SegmentHeader), kLine);
  l.ranks_offset = at;
  at += size_t(size) * sizeof(RankWake);
  l.arrivals_offset = at;
  at += size_t(size) * size_t(l.contexts) * sizeof(Arrival);
  l.ring_controls_offset = at;
  at += size_t(l.rings()) * sizeof(RingControl);
  l.rings_offset = round_up(at, kPage);
  l.slots_offset = l.rings_offset + size_t(l.rings()) * l.ring_bytes;
  l.total_bytes = l.slots_offset + size_t(size) * size_t(l.contexts) * 2 * l.slot_bytes;
  return l;
}

namespace {

struct FdGuard {
  int fd = -1;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

// Sleeps between polls of a joining peer: short at first (ranks start together), then longer.
struct Backoff {
  std::chrono::microseconds pause{50};
  void sleep() {
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(2000));
  }
};

// Unlinks `name` only if it still names the segment open as `fd`: a failing rank must never
// remove a newer group that reuses the name.
void unlink_if_ours(const std::string& name, int fd) {
  struct stat mine;
  if (::fstat(fd, &mine) != 0 || mine.st_nlink == 0) return;
  int other = ::shm_open(name.c_str(), O_RDONLY, 0);
  if (other < 0) return;
  struct stat theirs;
  bool same = ::fstat(other, &theirs) == 0 && theirs.st_dev == mine.st_dev && theirs.st_ino == mine.st_ino;
  ::close(other);
  if (same) ::shm_unlink(name.c_str());
}

std::string errno_text() { return std::strerror(errno); }

// One attempt at joining the segment open as `fd`, which may turn out to be stale (unlinked, or
// a previous group of the same name already complete): then the caller opens the name again.
class JoinAttempt {
 public:
  JoinAttempt(const std::string& name, int rank, const Layout& layout, int fd, bool creator, Clock::time_point deadline,
              std::chrono::milliseconds timeout)
      : name_(name), rank_(rank), layout_(layout), fd_(fd), creator_(creator), deadline_(deadline), timeout_(timeout) {}

  ~JoinAttempt() {
    if (base_) ::munmap(base_, layout_.total_bytes);
  }

  // True once every rank has joined (then release() hands over the mapping); false when the
  // segment was stale and the caller should open the name again.
  bool run(std::vector<int32_t>* pids) {
    try {
      if (creator_ ? !create() : !open_existing()) return false;
      if (!claim_and_wait()) return false;
    } catch (...) {
      abandon();
      throw;
    }
    pids->resize(size_t(layout_.size));
    for (int r = 0; r < layout_.size; ++r) (*pids)[size_t(r)] = atom(wakes()[r].pid).load(std::memory_order_acquire);
    return true;
  }

  uint8_t* release() { return std::exchange(base_, nullptr); }

 private:
  SegmentHeader& header() { return *reinterpret_cast<SegmentHeader*>(base_); }
  RankWake* wakes() { return reinterpret_cast<RankWake*>(base_ + layout_.ranks_offset); }

  [[noreturn]] void fail(const std::string& what) {
    reason_ = what;
    throw CommError(fmt::format("shm group '{}': rank {}: {}", name_, rank_, what));
  }

  void map() {
    void* p = ::mmap(nullptr, layout_.total_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, 0);
    if (p == MAP_FAILED) fail(fmt::format("cannot map {} bytes: {}", layout_.total_bytes, errno_text()));
    base_ = static_cast<uint8_t*>(p);
  }

  bool create() {
    if (::ftruncate(fd_, off_t(layout_.total_bytes)) != 0)
      fail(fmt::format("cannot size the segment to {} bytes: {}", layout_.total_bytes, errno_text()));
    // Reserve the pages now: on a full /dev/shm a later first touch would be SIGBUS, not an error.
    if (int e = ::posix_fallocate(fd_, 0, off_t(layout_.total_bytes)); e != 0)
      fail(fmt::format("cannot reserve {:.1f} MiB in /dev/shm ({}); is /dev/shm too small?",
                       double(layout_.total_bytes) / (1 << 20), std::strerror(e)));
    map();
    SegmentHeader& h = header();
    h.version = kVersion;
    h.size = layout_.size;
    h.total_bytes = layout_.total_bytes;
    h.creator_pid = int32_t(::getpid());
    atom(h.magic).store(kMagic, std::memory_order_release);
    return true;
  }

  bool open_existing() {
    Backoff backoff;
    struct stat st;
    for (;;) {  // the creator may not have sized it yet
      if (::fstat(fd_, &st) != 0) fail(fmt::format("cannot stat the segment: {}", errno_text()));
      if (st.st_nlink == 0) return false;
      if (st.st_size != 0) break;
      if (Clock::now() > deadline_)
        fail(fmt::format("timed out after {} ms: the rank that created the segment never sized it", timeout_.count()));
      backoff.sleep();
    }
    if (size_t(st.st_size) != layout_.total_bytes) report_size_mismatch(size_t(st.st_size));
    map();
    SegmentHeader& h = header();
    while (atom(h.magic).load(std::memory_order_acquire) != kMagic) {
      if (::fstat(fd_, &st) == 0 && st.st_nlink == 0) return false;
      if (Clock::now() > deadline_)
        fail(fmt::format("timed out after {} ms: the rank that created the segment never initialized it",
                         timeout_.count()));
      backoff.sleep();
    }
    if (h.version != kVersion || h.size != layout_.size)
      fail(fmt::format("the segment was made for {} ranks (format {}), this rank was told {} (format {})", h.size,
                       h.version, layout_.size, kVersion));
    return true;
  }

  [[noreturn]] void report_size_mismatch(size_t actual) {
    // Read the creator's header through a mapping of its first page, and mark the join abandoned
    // there so the ranks already inside fail now instead of at their timeout.
    void* p = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    int their_size = -1;
    if (p != MAP_FAILED) {
      auto& h = *static_cast<SegmentHeader*>(p);
      if (atom(h.magic).load(std::memory_order_acquire) == kMagic) their_size = h.size;
      std::string why = their_size > 0 ? fmt::format("the group was created with {} ranks, but this rank was told {}",
                                                     their_size, layout_.size)
                                       : fmt::format("the segment has {} bytes, but {} ranks need {}", actual,
                                                     layout_.size, layout_.total_bytes);
      publish_abandon(h, why);
      ::munmap(p, kPage);
      unlink_if_ours(name_, fd_);
      fail(why);
    }
    unlink_if_ours(name_, fd_);
    fail(fmt::format("cannot map the segment's header: {}", errno_text()));
  }

  // Tells the ranks inside why this one gave up, so they fail now with that reason.
  void publish_abandon(SegmentHeader& h, const std::string& why) {
    int expected = 0;
    if (atom(h.abandoning).compare_exchange_strong(expected, 1)) {
      std::string text = fmt::format("rank {} gave up joining: {}", rank_, why);
      std::snprintf(h.abandon_reason, sizeof h.abandon_reason, "%s", text.c_str());
      atom(h.abandoned_by).store(rank_ + 1, std::memory_order_release);
    }
    futex_wake_all(&h.joined);
  }

  bool claim_and_wait() {
    SegmentHeader& h = header();
    const int n = layout_.size;
    if (atom(h.joined).load(std::memory_order_acquire) >= uint32_t(n)) return false;  // an old, complete group
    check_not_abandoned();
    int32_t expected = 0;
    if (!atom(wakes()[rank_].pid).compare_exchange_strong(expected, int32_t(::getpid())))
      fail(fmt::format("rank {} is already taken by pid {}", rank_, expected));
    if (atom(h.joined).fetch_add(1, std::memory_order_acq_rel) + 1 == uint32_t(n)) {
      // Everyone has it mapped: from now on no crash can leave it behind. Only then does the
      // count say "complete" (n + 1), so no rank returns while the name still exists.
      ::shm_unlink(name_.c_str());
      atom(h.joined).store(uint32_t(n) + 1, std::memory_order_release);
      futex_wake_all(&h.joined);
      return true;
    }
    auto last_check = Clock::now();
    for (;;) {
      uint32_t joined = atom(h.joined).load(std::memory_order_acquire);
      if (joined > uint32_t(n)) return true;
      check_not_abandoned();
      auto now = Clock::now();
      if (now - last_check >= kCheckPeriod || now >= deadline_) {
        last_check = now;
        for (int r = 0; r < n; ++r) {
          int pid = atom(wakes()[r].pid).load(std::memory_order_acquire);
          if (r != rank_ && pid != 0 && !process_exists(pid))
            fail(fmt::format("rank {} (pid {}) exited before all {} ranks had joined", r, pid, n));
        }
        if (now >= deadline_) {
          std::vector<int> missing;
          for (int r = 0; r < n; ++r)
            if (atom(wakes()[r].pid).load(std::memory_order_acquire) == 0) missing.push_back(r);
          if (missing.empty()) continue;  // the last one is between its claim and its count
          fail(fmt::format("timed out after {} ms waiting for rank{} {} to join", timeout_.count(),
                           missing.size() == 1 ? "" : "s", fmt::join(missing, ", ")));
        }
      }
      futex_wait(&h.joined, joined, std::min<Clock::duration>(kCheckPeriod, deadline_ - now));
    }
  }

  void check_not_abandoned() {
    SegmentHeader& h = header();
    if (atom(h.abandoned_by).load(std::memory_order_acquire) != 0)
      fail(std::string(h.abandon_reason, strnlen(h.abandon_reason, sizeof h.abandon_reason)));
  }

  // A failed join: tell the others (they fail now, not at their timeout) and leave nothing in /dev/shm.
  void abandon() {
    if (base_ && atom(header().magic).load(std::memory_order_acquire) == kMagic)
      publish_abandon(header(), reason_.empty() ? "an unexpected error" : reason_);
    unlink_if_ours(name_, fd_);
  }

  const std::string& name_;
  int rank_;
  const Layout& layout_;
  int fd_;
  bool creator_;
  Clock::time_point deadline_;
  std::chrono::milliseconds timeout_;
  uint8_t* base_ = nullptr;
  std::string reason_;  // of the last failure, for the other ranks
};

void validate(const std::string& name, int rank, int size) {
  if (name.size() < 2 || name[0] != '/' || name.find('/', 1) != std::string::npos || name.size() > 200)
    throw CommError(fmt::format("shm group name '{}' must be '/' followed by up to 199 characters without '/'", name));
  if (size < 1 || size > kMaxRanks)
    throw CommError(fmt::format("shm group '{}': size {} is outside 1..{}", name, size, kMaxRanks));
  if (rank < 0 || rank >= size)
    throw CommError(fmt::format("shm group '{}': rank {} is outside 0..{}", name, rank, size - 1));
}

}  // namespace

Segment Segment::join(const std::string& name, int rank, int size, std::chrono::milliseconds timeout) {
  validate(name, rank, size);
  const Layout layout = Layout::for_size(size);
  const auto deadline = Clock::now() + timeout;
  Backoff backoff;
  for (;;) {
    FdGuard fd;
    bool creator = true;
    fd.fd = ::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd.fd < 0) {
      if (errno != EEXIST)
        throw CommError(
            fmt::format("shm group '{}': rank {}: cannot create shared memory: {}", name, rank, errno_text()));
      creator = false;
      fd.fd = ::shm_open(name.c_str(), O_RDWR, 0);
      if (fd.fd < 0 && errno != ENOENT)  // ENOENT: unlinked between the two calls; start over
        throw CommError(
            fmt::format("shm group '{}': rank {}: cannot open shared memory: {}", name, rank, errno_text()));
    }
    if (fd.fd >= 0) {
      JoinAttempt attempt(name, rank, layout, fd.fd, creator, deadline, timeout);
      std::vector<int32_t> pids;
      if (attempt.run(&pids)) return Segment(attempt.release(), layout, std::move(pids));
    }
    if (Clock::now() > deadline)
      throw CommError(
          fmt::format("shm group '{}': rank {}: timed out after {} ms; the segment kept disappearing "
                      "(an older group of the same name?)",
                      name, rank, timeout.count()));
    backoff.sleep();
  }
}

Segment::Segment(Segment&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), layout_(other.layout_), pids_(std::move(other.pids_)) {}

Segment::~Segment() {
  if (base_) ::munmap(base_, layout_.total_bytes);
}

}  // namespace shardlm::comm::shm
