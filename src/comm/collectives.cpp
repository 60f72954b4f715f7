#include "comm/collectives.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "core/dtype.h"

namespace shardlm::comm {

namespace {

// Chunk c of a buffer of `count` elements split into n nearly equal chunks.
inline size_t chunk_begin(size_t count, int n, int c) { return count * size_t(c) / size_t(n); }

template <class T, class Add>
void ring_reduce(Group& g, T* data, size_t count, Add add) {
  const int n = g.size(), r = g.rank();
  if (n == 1 || count == 0) return;
  const int right = (r + 1) % n, left = (r + n - 1) % n;
  std::vector<T> incoming(count / size_t(n) + 1);
  // Reduce-scatter: after n-1 steps rank r holds the full sum of chunk (r+1) % n.
  for (int step = 0; step < n - 1; ++step) {
    int send_chunk = (r - step + n) % n, recv_chunk = (r - step - 1 + n) % n;
    size_t sb = chunk_begin(count, n, send_chunk), se = chunk_begin(count, n, send_chunk + 1);
    size_t rb = chunk_begin(count, n, recv_chunk), re = chunk_begin(count, n, recv_chunk + 1);
    g.send_recv(right, data + sb, (se - sb) * sizeof(T), left, incoming.data(), (re - rb) * sizeof(T));
    for (size_t i = 0; i < re - rb; ++i) data[rb + i] = add(data[rb + i], incoming[i]);
  }
  // All-gather the reduced chunks: each chunk's bits come from the one rank that summed it.
  for (int step = 0; step < n - 1; ++step) {
    int send_chunk = (r + 1 - step + n) % n, recv_chunk = (r - step + n) % n;
    size_t sb = chunk_begin(count, n, send_chunk), se = chunk_begin(count, n, send_chunk + 1);
    size_t rb = chunk_begin(count, n, recv_chunk), re = chunk_begin(count, n, recv_chunk + 1);
    g.send_recv(right, data + sb, (se - sb) * sizeof(T), left, data + rb, (re - rb) * sizeof(T));
  }
}

}  // namespace

void ring_all_reduce_sum(Group& g, float* data, size_t count) {
  ring_reduce(g, data, count, [](float a, float b) { return a + b; });
}

void ring_all_reduce_sum_bf16(Group& g, uint16_t* data, size_t count) {
  // Sum in f32 (a bf16 partial sum per hop would lose bits at every rank), round once at the end.
  std::vector<float> wide(count);
  for (size_t i = 0; i < count; ++i) wide[i] = bf16_to_f32(data[i]);
  ring_all_reduce_sum(g, wide.data(), count);
  for (size_t i = 0; i < count; ++i) data[i] = f32_to_bf16(wide[i]);
}

void ring_all_gather(Group& g, const void* mine, size_t bytes, void* all) {
  const int n = g.size(), r = g.rank();
  auto* out = static_cast<uint8_t*>(all);
  if (out + size_t(r) * bytes != mine) std::memcpy(out + size_t(r) * bytes, mine, bytes);
  const int right = (r + 1) % n, left = (r + n - 1) % n;
  for (int step = 0; step < n - 1; ++step) {
    int send_block = (r - step + n) % n, recv_block = (r - step - 1 + n) % n;
    g.send_recv(right, out + size_t(send_block) * bytes, bytes, left, out + size_t(recv_block) * bytes, bytes);
  }
}

void dissemination_barrier(Group& g) {
  const int n = g.size(), r = g.rank();
  uint8_t out = 1, in = 0;
  for (int dist = 1; dist < n; dist *= 2) g.send_recv((r + dist) % n, &out, 1, (r - dist + n) % n, &in, 1);
}

SubGroup::SubGroup(Group& parent, std::vector<int> members) : parent_(parent), members_(std::move(members)) {
  auto it = std::find(members_.begin(), members_.end(), parent.rank());
  if (it == members_.end()) throw CommError("internal: a sub-group must contain the calling rank");
  rank_ = int(it - members_.begin());
}

namespace {
// Adds the parent's traffic during one call to this sub-group's own counters.
struct StatsScope {
  Group& parent;
  CommStats& mine;
  CommStats before;
  StatsScope(Group& p, CommStats& m) : parent(p), mine(m), before(p.stats()) {}
  ~StatsScope() {
    CommStats after = parent.stats();
    mine.bytes_sent += after.bytes_sent - before.bytes_sent;
    mine.bytes_received += after.bytes_received - before.bytes_received;
    mine.messages_sent += after.messages_sent - before.messages_sent;
    mine.seconds += after.seconds - before.seconds;
  }
};
}  // namespace

void SubGroup::send(int peer, const void* data, size_t bytes) {
  StatsScope s(parent_, stats_);
  parent_.send(members_.at(size_t(peer)), data, bytes);
}
void SubGroup::recv(int peer, void* data, size_t bytes) {
  StatsScope s(parent_, stats_);
  parent_.recv(members_.at(size_t(peer)), data, bytes);
}
void SubGroup::send_recv(int to, const void* sd, size_t sb, int from, void* rd, size_t rb) {
  StatsScope s(parent_, stats_);
  parent_.send_recv(members_.at(size_t(to)), sd, sb, members_.at(size_t(from)), rd, rb);
}
std::unique_ptr<Group> SubGroup::split(int color, int key) { return split_by_color(*this, color, key); }

std::unique_ptr<Group> split_by_color(Group& g, int color, int key) {
  const int n = g.size();
  int32_t mine[3] = {color, key, g.rank()};
  std::vector<int32_t> all(size_t(n) * 3);
  g.all_gather(mine, sizeof mine, all.data());
  std::vector<std::pair<std::pair<int, int>, int>> chosen;  // ((key, rank), rank)
  for (int r = 0; r < n; ++r)
    if (all[size_t(r) * 3] == color) chosen.push_back({{all[size_t(r) * 3 + 1], r}, r});
  std::sort(chosen.begin(), chosen.end());
  std::vector<int> members;
  for (auto& c : chosen) members.push_back(c.second);
  return std::make_unique<SubGroup>(g, std::move(members));
}

}  // namespace shardlm::comm
