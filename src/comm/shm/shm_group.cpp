#include "comm/shm/shm_group.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "comm/collectives.h"
#include "comm/shm/shm_reduce.h"
#include "comm/shm/shm_ring.h"
#include "comm/shm/shm_segment.h"
#include "comm/shm/shm_wait.h"

namespace shardlm::comm {

namespace shm {

// What the root group and its native splits share inside one process: the mapping, the rings'
// local ends and message counters (rings belong to pairs of processes, not to groups), and
// which collective contexts this rank has handed out.
struct Shared {
  std::string name;
  Segment segment;
  PeerWatch peers;
  int self;
  WaitContext waiter;
  std::vector<RingEnd> out, in;  // by global peer rank
  std::vector<uint32_t> sent, received;
  int next_context = 1;  // 0 is the root group's
  std::string broken;    // the first CommError: after it, rings may hold half a message

  Shared(std::string group_name, Segment seg, int rank, std::chrono::milliseconds timeout)
      : name(std::move(group_name)),
        segment(std::move(seg)),
        peers(segment.pids(), rank),
        self(rank),
        waiter{&segment.header(), segment.wakes(), rank, &peers, timeout, &name} {
    const int n = segment.layout().size;
    out.resize(size_t(n));
    in.resize(size_t(n));
    sent.assign(size_t(n), 0);
    received.assign(size_t(n), 0);
    for (int p = 0; p < n; ++p) {
      if (p == rank) continue;
      out[size_t(p)] = {&segment.ring_control(rank, p), segment.ring_data(rank, p), segment.layout().ring_bytes, 0};
      in[size_t(p)] = {&segment.ring_control(p, rank), segment.ring_data(p, rank), segment.layout().ring_bytes, 0};
    }
  }
};

// A group over the shared segment: the root one (every rank, context 0) or a native split (its
// members, each with the context it offered). Collectives use each member's slots and barrier
// generation of that context, so groups sharing ranks never disturb each other.
class ShmGroup final : public Group {
 public:
  ShmGroup(std::shared_ptr<Shared> shared, std::vector<int> members, std::vector<int> contexts)
      : sh_(std::move(shared)), members_(std::move(members)), contexts_(std::move(contexts)) {
    rank_ = int(std::find(members_.begin(), members_.end(), sh_->self) - members_.begin());
    context_ = contexts_[size_t(rank_)];
    const Layout& l = sh_->segment.layout();
    slot_floats_ = l.slot_bytes / sizeof(float);
    slot_halves_ = l.slot_bytes / sizeof(uint16_t);
  }

  int rank() const override { return rank_; }
  int size() const override { return int(members_.size()); }
  std::string backend() const override { return "shm"; }

  void send(int peer, const void* data, size_t bytes) override {
    check_peer(peer, "send to");
    guarded([&] { send_to(peer, static_cast<const uint8_t*>(data), bytes); });
    stats_.bytes_sent += bytes;
    stats_.messages_sent += 1;
  }

  void recv(int peer, void* data, size_t bytes) override {
    check_peer(peer, "receive from");
    guarded([&] { recv_from(peer, static_cast<uint8_t*>(data), bytes); });
    stats_.bytes_received += bytes;
  }

  void send_recv(int to, const void* send_data, size_t send_bytes, int from, void* recv_data,
                 size_t recv_bytes) override {
    if (to == rank_ && from == rank_) {  // a ring of one: the message goes to itself
      if (send_bytes != recv_bytes) fail_size(sh_->self, send_bytes, recv_bytes);
      if (send_bytes) std::memmove(recv_data, send_data, send_bytes);
      return;
    }
    check_peer(to, "send to");
    check_peer(from, "receive from");
    guarded([&] {
      exchange(to, static_cast<const uint8_t*>(send_data), send_bytes, from, static_cast<uint8_t*>(recv_data),
               recv_bytes);
    });
    stats_.bytes_sent += send_bytes;
    stats_.bytes_received += recv_bytes;
    stats_.messages_sent += 1;
  }

  void all_reduce_sum(float* data, size_t count) override {
    reduce(Op::AllReduceF32, data, count, slot_floats_,
           [](float* out, const float* const* src, int n, size_t k) { shm::sum_f32(out, src, n, k); });
  }

  void all_reduce_sum_bf16(uint16_t* data, size_t count) override {
    reduce(Op::AllReduceBf16, data, count, slot_halves_,
           [](uint16_t* out, const uint16_t* const* src, int n, size_t k) { shm::sum_bf16(out, src, n, k); });
  }

  void all_gather(const void* mine, size_t bytes, void* all) override {
    const int n = size();
    auto* dst = static_cast<uint8_t*>(all);
    const auto* src = static_cast<const uint8_t*>(mine);
    if (n == 1) {
      if (bytes && dst != src) std::memmove(dst, src, bytes);
      return;
    }
    const size_t chunk = sh_->segment.layout().slot_bytes;
    guarded([&] {
      for (size_t at = 0; at < bytes; at += chunk) {
        const size_t k = std::min(chunk, bytes - at);
        const int buffer = take_buffer();
        std::memcpy(sh_->segment.slot(sh_->self, context_, buffer), src + at, k);
        arrive_and_wait(Op::AllGather, bytes - at, "reach all_gather");
        for (int m = 0; m < n; ++m) std::memcpy(dst + size_t(m) * bytes + at, member_slot(m, buffer), k);
      }
    });
    stats_.bytes_sent += bytes;
    stats_.bytes_received += size_t(n - 1) * bytes;
    stats_.messages_sent += 1;
  }

  void barrier() override {
    if (size() == 1) return;
    guarded([&] { arrive_and_wait(Op::Barrier, 0, "reach the barrier"); });
  }

  std::unique_ptr<Group> split(int color, int key) override;

  // A group object with this one's members and contexts, for point-to-point only: a fallback
  // split owns one, so it does not depend on this group's lifetime.
  std::unique_ptr<ShmGroup> point_to_point_clone() const {
    return std::make_unique<ShmGroup>(sh_, members_, contexts_);
  }

  CommStats stats() const override { return stats_; }
  void reset_stats() override { stats_ = {}; }

 private:
  const std::string& name() const { return sh_->name; }
  int global(int member) const { return members_[size_t(member)]; }

  void check_peer(int peer, const char* what) const {
    if (peer < 0 || peer >= size() || peer == rank_)
      throw CommError(
          fmt::format("shm group '{}': rank {} cannot {} rank {} (group of {})", name(), rank_, what, peer, size()));
  }

  // Errors about traffic name ranks as launched (global), like the liveness errors do; only
  // check_peer, about the caller's own arguments, speaks in this group's ranks.
  [[noreturn]] void fail_size(int global_from, size_t sent, size_t expected) const {
    throw CommError(fmt::format("shm group '{}': rank {} sent a message of {} bytes, but rank {} expected {}", name(),
                                global_from, sent, sh_->self, expected));
  }

  // Runs one call: refuses a group broken by an earlier error, breaks it on this one, counts time.
  template <class Body>
  void guarded(Body&& body) {
    if (!sh_->broken.empty())
      throw CommError(fmt::format("shm group '{}': unusable after an earlier error: {}", name(), sh_->broken));
    const auto start = shm::Clock::now();
    try {
      body();
    } catch (const CommError& e) {
      sh_->broken = e.what();
      stats_.seconds += std::chrono::duration<double>(shm::Clock::now() - start).count();
      throw;
    }
    stats_.seconds += std::chrono::duration<double>(shm::Clock::now() - start).count();
  }

  // ---- point to point ----

  shm::SendOp make_send(int peer, const uint8_t* data, size_t bytes) {
    return shm::SendOp{{bytes, sh_->sent[size_t(global(peer))]++, uint32_t(context_)}, data};
  }
  shm::RecvOp make_recv(int peer, uint8_t* data, size_t bytes) {
    return shm::RecvOp{{bytes, sh_->received[size_t(global(peer))]++, uint32_t(contexts_[size_t(peer)])}, data};
  }

  void verify(int peer, const shm::RecvOp& op) const {
    const shm::MessageHeader &got = op.got, &want = op.expected;
    if (got.context != want.context)
      throw CommError(
          fmt::format("shm group '{}': rank {} received a message that rank {} sent in another group "
                      "(context {} instead of {}): groups used in a different order on the two ranks?",
                      name(), sh_->self, global(peer), got.context, want.context));
    if (got.sequence != want.sequence)
      throw CommError(fmt::format("shm group '{}': message #{} from rank {} arrived as #{}: the ring is corrupt",
                                  name(), want.sequence, global(peer), got.sequence));
    if (got.length != want.length) fail_size(global(peer), got.length, want.length);
  }

  void send_to(int peer, const uint8_t* data, size_t bytes) {
    const int g = global(peer);
    shm::RingEnd& ring = sh_->out[size_t(g)];
    shm::SendOp op = make_send(peer, data, bytes);
    while (!op.finished()) {
      if (shm::step_send(ring, op)) {
        sh_->waiter.wake(g);
        continue;
      }
      sh_->waiter.wait([&] { return ring.has_room(); }, [&] { return std::vector<int>{g}; },
                       "receive (its ring from this rank is full)");
    }
  }

  void recv_from(int peer, uint8_t* data, size_t bytes) {
    const int g = global(peer);
    shm::RingEnd& ring = sh_->in[size_t(g)];
    shm::RecvOp op = make_recv(peer, data, bytes);
    auto check = [&](const shm::MessageHeader&) { verify(peer, op); };
    while (!op.finished()) {
      if (shm::step_recv(ring, op, check)) {
        sh_->waiter.wake(g);
        continue;
      }
      sh_->waiter.wait([&] { return ring.has_data(); }, [&] { return std::vector<int>{g}; }, "send a message");
    }
  }

  // Both directions at once, one piece at a time, so neither side can block the other.
  void exchange(int to, const uint8_t* send_data, size_t send_bytes, int from, uint8_t* recv_data, size_t recv_bytes) {
    const int gto = global(to), gfrom = global(from);
    shm::RingEnd& out = sh_->out[size_t(gto)];
    shm::RingEnd& in = sh_->in[size_t(gfrom)];
    shm::SendOp s = make_send(to, send_data, send_bytes);
    shm::RecvOp r = make_recv(from, recv_data, recv_bytes);
    auto check = [&](const shm::MessageHeader&) { verify(from, r); };
    while (!s.finished() || !r.finished()) {
      bool moved = false;
      if (!s.finished() && shm::step_send(out, s)) {
        sh_->waiter.wake(gto);
        moved = true;
      }
      if (!r.finished() && shm::step_recv(in, r, check)) {
        sh_->waiter.wake(gfrom);
        moved = true;
      }
      if (moved) continue;
      sh_->waiter.wait([&] { return (!s.finished() && out.has_room()) || (!r.finished() && in.has_data()); },
                       [&] {
                         std::vector<int> p;
                         if (!r.finished()) p.push_back(gfrom);
                         if (!s.finished() && gto != gfrom) p.push_back(gto);
                         return p;
                       },
                       "exchange messages with it");
    }
  }

  // ---- collectives ----

  // Slots are double-buffered: chunk k writes buffer k % 2 and then passes barrier k, which no
  // rank reaches before it has finished reading chunk k-1's buffers. So chunk k+2 may reuse
  // buffer k % 2 with only one barrier per chunk.
  int take_buffer() {
    int b = next_buffer_;
    next_buffer_ ^= 1;
    return b;
  }
  uint8_t* member_slot(int member, int buffer) const {
    return sh_->segment.slot(global(member), contexts_[size_t(member)], buffer);
  }

  enum class Op : uint32_t { Barrier, AllReduceF32, AllReduceBf16, AllGather };
  static const char* op_name(uint32_t op) {
    static const char* names[] = {"barrier", "all_reduce_sum", "all_reduce_sum_bf16", "all_gather"};
    return names[op & 3];
  }
  static uint32_t generation_of(uint64_t word) { return uint32_t(word >> 32); }

  // The barrier of every collective: publish (generation, what), wait until every member has
  // reached this generation, then check that they are all doing the same thing.
  void arrive_and_wait(Op op, size_t bytes_left, const char* what) {
    const uint32_t gen = ++generation_;
    const uint32_t doing = uint32_t(op) << 30 | uint32_t(bytes_left & 0x3fffffff);
    atom(sh_->segment.arrival(sh_->self, context_).word).store(uint64_t(gen) << 32 | doing, std::memory_order_seq_cst);
    const int n = size();
    for (int m = 0; m < n; ++m)
      if (m != rank_) sh_->waiter.wake(global(m));
    auto word_of = [&](int m) {
      return atom(sh_->segment.arrival(global(m), contexts_[size_t(m)]).word).load(std::memory_order_acquire);
    };
    auto arrived = [&](int m) { return int32_t(generation_of(word_of(m)) - gen) >= 0; };
    int first_pending = 0;
    sh_->waiter.wait(
        [&] {
          while (first_pending < n && arrived(first_pending)) ++first_pending;
          return first_pending == n;
        },
        [&] {
          std::vector<int> p;
          for (int m = 0; m < n; ++m)
            if (!arrived(m)) p.push_back(global(m));
          return p;
        },
        what);
    for (int m = 0; m < n; ++m) {
      const uint64_t w = word_of(m);
      // A member already past this generation did pass it, so it was doing the same thing.
      if (m == rank_ || generation_of(w) != gen || uint32_t(w) == doing) continue;
      if ((uint32_t(w) >> 30) != uint32_t(op))
        throw CommError(fmt::format("shm group '{}': rank {} called {} while rank {} called {}", name(), global(m),
                                    op_name(uint32_t(w) >> 30), sh_->self, op_name(uint32_t(op))));
      throw CommError(fmt::format(
          "shm group '{}': rank {} called {} with {} bytes left while rank {} had {} "
          "(sizes must match on every rank; counted modulo 2^30)",
          name(), global(m), op_name(uint32_t(op)), uint32_t(w) & 0x3fffffff, sh_->self, doing & 0x3fffffff));
    }
  }

  template <class T, class Sum>
  void reduce(Op op, T* data, size_t count, size_t chunk, Sum&& sum) {
    const int n = size();
    if (n == 1 || count == 0) return;
    guarded([&] {
      const T* src[64];  // a group has at most 64 ranks (Segment::join checks)
      for (size_t at = 0; at < count; at += chunk) {
        const size_t k = std::min(chunk, count - at);
        const int buffer = take_buffer();
        std::memcpy(sh_->segment.slot(sh_->self, context_, buffer), data + at, k * sizeof(T));
        arrive_and_wait(op, (count - at) * sizeof(T), "reach all_reduce");
        for (int m = 0; m < n; ++m)
          src[m] = m == rank_ ? data + at : reinterpret_cast<const T*>(member_slot(m, buffer));
        sum(data + at, src, n, k);
      }
    });
    stats_.bytes_sent += count * sizeof(T);
    stats_.bytes_received += size_t(n - 1) * count * sizeof(T);
    stats_.messages_sent += 1;
  }

  std::shared_ptr<Shared> sh_;
  std::vector<int> members_;   // global ranks, in this group's rank order
  std::vector<int> contexts_;  // each member's context for this group
  int rank_ = 0;
  int context_ = 0;
  size_t slot_floats_ = 0, slot_halves_ = 0;
  int next_buffer_ = 0;
  uint32_t generation_ = 0;
  CommStats stats_;
};

// The ranks (of a group of `n`) whose gathered color is `color`, ordered by key then rank, as
// MPI_Comm_split orders them. `gathered` holds `stride` int32 per rank: color, key, ...
std::vector<int> members_of_color(const std::vector<int32_t>& gathered, int n, int stride, int color) {
  std::vector<std::pair<std::pair<int, int>, int>> chosen;  // ((key, rank), rank)
  for (int r = 0; r < n; ++r)
    if (gathered[size_t(r * stride)] == color) chosen.push_back({{gathered[size_t(r * stride + 1)], r}, r});
  std::sort(chosen.begin(), chosen.end());
  std::vector<int> ranks;
  for (auto& c : chosen) ranks.push_back(c.second);
  return ranks;
}

// A split made when a member had no native context left: SubGroup (collectives over
// point-to-point) on a clone of the parent that it owns, so it may outlive the parent.
class SplitOverPointToPoint final : public Group {
 public:
  SplitOverPointToPoint(std::unique_ptr<ShmGroup> parent, std::vector<int> members)
      : parent_(std::move(parent)), members_(members), sub_(*parent_, std::move(members)) {}
  int rank() const override { return sub_.rank(); }
  int size() const override { return sub_.size(); }
  std::string backend() const override { return sub_.backend(); }
  void send(int peer, const void* data, size_t bytes) override { sub_.send(peer, data, bytes); }
  void recv(int peer, void* data, size_t bytes) override { sub_.recv(peer, data, bytes); }
  void send_recv(int to, const void* sd, size_t sb, int from, void* rd, size_t rb) override {
    sub_.send_recv(to, sd, sb, from, rd, rb);
  }
  void all_reduce_sum(float* data, size_t count) override { sub_.all_reduce_sum(data, count); }
  void all_reduce_sum_bf16(uint16_t* data, size_t count) override { sub_.all_reduce_sum_bf16(data, count); }
  void all_gather(const void* mine, size_t bytes, void* all) override { sub_.all_gather(mine, bytes, all); }
  void barrier() override { sub_.barrier(); }
  std::unique_ptr<Group> split(int color, int key) override {
    const int n = size();
    int32_t mine[2] = {color, key};
    std::vector<int32_t> all(size_t(n) * 2);
    all_gather(mine, sizeof mine, all.data());
    std::vector<int> parent_ranks;
    for (int local : members_of_color(all, n, 2, color)) parent_ranks.push_back(members_[size_t(local)]);
    return std::make_unique<SplitOverPointToPoint>(parent_->point_to_point_clone(), std::move(parent_ranks));
  }
  CommStats stats() const override { return sub_.stats(); }
  void reset_stats() override { sub_.reset_stats(); }

 private:
  std::unique_ptr<ShmGroup> parent_;  // declared first: it must outlive sub_
  std::vector<int> members_;          // parent ranks
  SubGroup sub_;
};

std::unique_ptr<Group> ShmGroup::split(int color, int key) {
  const int n = size();
  int32_t offer = sh_->next_context < sh_->segment.layout().contexts ? sh_->next_context++ : -1;
  int32_t mine[3] = {color, key, offer};
  std::vector<int32_t> all(size_t(n) * 3);
  all_gather(mine, sizeof mine, all.data());
  std::vector<int> local = members_of_color(all, n, 3, color), global, contexts;
  bool native = true;
  for (int m : local) {
    global.push_back(members_[size_t(m)]);
    contexts.push_back(all[size_t(m) * 3 + 2]);
    native = native && contexts.back() >= 0;
  }
  // Every member saw the same offers, so all of them make the same choice here.
  if (!native) return std::make_unique<SplitOverPointToPoint>(point_to_point_clone(), std::move(local));
  return std::make_unique<ShmGroup>(sh_, std::move(global), std::move(contexts));
}

}  // namespace shm

std::unique_ptr<Group> make_shm_group(const ShmGroupOptions& options) {
  shm::Segment segment = shm::Segment::join(options.name, options.rank, options.size, options.timeout);
  auto shared = std::make_shared<shm::Shared>(options.name, std::move(segment), options.rank, options.timeout);
  std::vector<int> members(size_t(options.size)), contexts(size_t(options.size), 0);
  for (int r = 0; r < options.size; ++r) members[size_t(r)] = r;
  return std::make_unique<shm::ShmGroup>(std::move(shared), std::move(members), std::move(contexts));
}

std::string new_shm_group_name() {
  std::random_device rd;
  uint64_t r = (uint64_t(rd()) << 32) ^ rd();
  return fmt::format("/shardlm-{}-{:016x}", ::getpid(), r);
}

}  // namespace shardlm::comm
