#include "comm/mpi/mpi_comm_group.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>

#include "comm/collectives.h"
#include "comm/mpi/mpi_runtime.h"
#include "core/dtype.h"

namespace shardlm::comm::mpi {

namespace {

constexpr int kTag = 1;
constexpr size_t kMaxCollectiveCount = size_t(1) << 30;  // elements per MPI call (counts are ints)
constexpr size_t kRingFromBytes = 256 << 10;

// A process that has exited but is not yet reaped still answers kill(pid, 0).
bool process_gone(int pid) {
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(stat, line)) return false;
  size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z';
}

}  // namespace

class MpiGroup::CallScope {
 public:
  explicit CallScope(MpiGroup& group) : group_(group) {
    if (!group.broken_.empty())
      throw CommError("mpi: this group is unusable after an earlier failure (" + group.broken_ + ")");
    if (group_.call_depth_++ == 0) start_ = Clock::now();
  }
  ~CallScope() {
    if (--group_.call_depth_ != 0) return;
    group_.stats_.seconds += std::chrono::duration<double>(Clock::now() - start_).count();
    // Pending operations keep what they need of a freed datatype (MPI-3.1 4.1.9).
    for (MPI_Datatype& type : group_.call_types_) MPI_Type_free(&type);
    group_.call_types_.clear();
  }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

 private:
  MpiGroup& group_;
  Clock::time_point start_;
};

MpiGroup::MpiGroup(MPI_Comm comm, std::chrono::milliseconds timeout, std::shared_ptr<const WorldPeers> peers,
                   bool is_world)
    : comm_(comm), timeout_(timeout), peers_(std::move(peers)), is_world_(is_world) {
  note_group_timeout(timeout);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  // World ranks name peers in errors the same way in every sub-group.
  MPI_Group mine, world;
  MPI_Comm_group(comm_, &mine);
  MPI_Comm_group(MPI_COMM_WORLD, &world);
  std::vector<int> ranks(static_cast<size_t>(size_));
  for (int r = 0; r < size_; ++r) ranks[size_t(r)] = r;
  world_rank_.resize(size_t(size_));
  MPI_Group_translate_ranks(mine, size_, ranks.data(), world, world_rank_.data());
  MPI_Group_free(&mine);
  MPI_Group_free(&world);
}

MpiGroup::~MpiGroup() {
  if (comm_ == MPI_COMM_NULL || !is_active()) return;
  // MPI must not lose the communicator under a collective it still runs.
  if (has_abandoned_collectives_)
    note_abandoned_communicator(comm_);
  else
    MPI_Comm_free(&comm_);
}

std::string MpiGroup::describe_rank(int rank) const {
  int world = world_rank_[size_t(rank)];
  const PeerIdentity& peer = peers_->by_world_rank[size_t(world)];
  if (is_world_) return fmt::format("rank {} (host {}, pid {})", rank, peer.host, peer.pid);
  return fmt::format("rank {} (world rank {}, host {}, pid {})", rank, world, peer.host, peer.pid);
}

std::string MpiGroup::describe_group() const {
  if (is_world_) return fmt::format("the world of {} ranks", size_);
  return fmt::format("the group of world ranks {}", fmt::join(world_rank_, ","));
}

int MpiGroup::exited_peer(std::span<const int> peers) const {
  const PeerIdentity& me = peers_->by_world_rank[size_t(peers_->my_world_rank)];
  auto gone = [&](int r) {
    if (r == rank_) return false;
    const PeerIdentity& peer = peers_->by_world_rank[size_t(world_rank_[size_t(r)])];
    // Only a process in our own pid namespace on our host can be probed.
    return peer.pid > 0 && peer.host == me.host && peer.pid_namespace == me.pid_namespace &&
           process_gone(peer.pid);
  };
  if (peers.empty()) {
    for (int r = 0; r < size_; ++r)
      if (gone(r)) return r;
  }
  for (int r : peers)
    if (gone(r)) return r;
  return -1;
}

void MpiGroup::check_peer(int peer, const char* call) const {
  if (peer < 0 || peer >= size_)
    throw CommError(fmt::format("mpi: {} names rank {}, outside this group of {} ranks", call, peer, size_));
}

[[noreturn]] void MpiGroup::fail(std::span<Pending> ops, const std::string& message) {
  if (abandon(ops) > 0) has_abandoned_collectives_ = true;
  note_group_failed();
  broken_ = message;
  throw CommError(message);
}

void MpiGroup::complete(std::span<Pending> ops, std::span<const int> peers, const Describe& what,
                        std::span<Pending> all_ops) {
  if (all_ops.empty()) all_ops = ops;
  PollResult result = poll(ops, Clock::now() + timeout_, [&] { return exited_peer(peers) >= 0; });
  if (result == PollResult::done) return;
  std::string why;
  if (result == PollResult::failed) {
    int error = MPI_SUCCESS, error_class = MPI_SUCCESS;
    long long arrived = -1;
    for (const Pending& op : ops) {
      if (op.error != MPI_SUCCESS) error = op.error;
      if (op.arrived_bytes >= 0) arrived = op.arrived_bytes;
    }
    MPI_Error_class(error, &error_class);
    if (arrived >= 0)
      why = fmt::format("the message has {} bytes", arrived);
    else if (error_class == MPI_ERR_TRUNCATE)
      why = "the message is larger than expected (MPI_ERR_TRUNCATE)";
    else
      why = error_text(error);
  } else if (int gone = exited_peer(peers); gone >= 0) {
    why = describe_rank(gone) + " has exited";
  } else {
    why = fmt::format("no answer within {} ms", timeout_.count());
  }
  fail(all_ops, fmt::format("mpi: {}: {}", what(), why));
}

void MpiGroup::check_received(const Pending& op, size_t bytes, const Describe& what) {
  MPI_Count got = 0;
  MPI_Get_elements_x(&op.status, MPI_BYTE, &got);
  if (got == MPI_UNDEFINED) fail({}, fmt::format("mpi: {}: the message has another size", what()));
  if (size_t(got) != bytes) fail({}, fmt::format("mpi: {}: the message has {} bytes", what(), got));
}

MpiGroup::ByteCount MpiGroup::byte_count(size_t bytes) {
  size_t block = std::min(large_message_bytes_, size_t(INT_MAX));
  if (bytes <= block) return {MPI_BYTE, int(bytes)};
  // One element of {bytes / block blocks, then the rest}: a single message of any size.
  MPI_Datatype block_type, type;
  MPI_Type_contiguous(int(block), MPI_BYTE, &block_type);
  int lengths[2] = {int(bytes / block), int(bytes % block)};
  MPI_Aint displacements[2] = {0, MPI_Aint(bytes / block * block)};
  MPI_Datatype types[2] = {block_type, MPI_BYTE};
  MPI_Type_create_struct(2, lengths, displacements, types, &type);
  MPI_Type_commit(&type);
  MPI_Type_free(&block_type);
  call_types_.push_back(type);
  return {type, 1};
}

Pending MpiGroup::post_send(int peer, const void* data, size_t bytes, const Describe& what) {
  Pending op;
  op.kind = Pending::Kind::send;
  ByteCount n = byte_count(bytes);
  int rc = MPI_Isend(data, n.count, n.type, peer, kTag, comm_, &op.request);
  if (rc != MPI_SUCCESS) fail({}, fmt::format("mpi: {}: {}", what(), error_text(rc)));
  return op;
}

Pending MpiGroup::expect_message(int peer, void* data, size_t bytes) {
  ByteCount n = byte_count(bytes);
  Pending op;
  op.kind = Pending::Kind::unseen_recv;
  op.expected = {.data = data, .count = n.count, .type = n.type, .bytes = bytes, .source = peer, .tag = kTag,
                 .comm = comm_};
  return op;
}

void MpiGroup::send(int peer, const void* data, size_t bytes) {
  CallScope scope(*this);
  check_peer(peer, "send");
  Describe what = [&] { return fmt::format("sending {} bytes to {}", bytes, describe_rank(peer)); };
  std::array<Pending, 1> ops = {post_send(peer, data, bytes, what)};
  std::array<int, 1> peers = {peer};
  complete(ops, peers, what);
  stats_.bytes_sent += bytes;
  stats_.messages_sent += 1;
}

void MpiGroup::recv(int peer, void* data, size_t bytes) {
  CallScope scope(*this);
  check_peer(peer, "recv");
  Describe what = [&] { return fmt::format("receiving {} bytes from {}", bytes, describe_rank(peer)); };
  std::array<Pending, 1> ops = {expect_message(peer, data, bytes)};
  std::array<int, 1> peers = {peer};
  complete(ops, peers, what);
  check_received(ops[0], bytes, what);
  stats_.bytes_received += bytes;
}

void MpiGroup::send_recv(int to, const void* send_data, size_t send_bytes, int from, void* recv_data,
                         size_t recv_bytes) {
  CallScope scope(*this);
  check_peer(to, "send_recv");
  check_peer(from, "send_recv");
  Describe what = [&] {
    return fmt::format("sending {} bytes to {} while receiving {} bytes from {}", send_bytes, describe_rank(to),
                       recv_bytes, describe_rank(from));
  };
  // Both posted before either is awaited, so two peers sending to each other never deadlock.
  std::array<Pending, 2> ops = {post_send(to, send_data, send_bytes, what),
                                expect_message(from, recv_data, recv_bytes)};
  std::array<int, 2> peers = {to, from};
  complete(ops, peers, what);
  check_received(ops[1], recv_bytes, what);
  stats_.bytes_sent += send_bytes;
  stats_.bytes_received += recv_bytes;
  stats_.messages_sent += 1;
}

void MpiGroup::all_reduce_sum(float* data, size_t count) {
  CallScope scope(*this);
  if (size_ == 1 || count == 0) return;
  AllReduceAlgorithm algorithm = algorithm_;
  if (algorithm == AllReduceAlgorithm::automatic) {
    // Measured with Open MPI 4.1 over shared memory (tests/bench/mpi_allreduce_bench): with 2
    // ranks the ring is fastest at every size (16 KB: 6.7 us against 7.6 us; 1 MB: 115 us
    // against 380-530 us, and as fast as a blocking MPI_Allreduce); with 3 ranks, small
    // messages do better in MPI's tree, whose latency grows with log2(ranks), not ranks.
    algorithm = size_ == 2 || count * sizeof(float) >= kRingFromBytes ? AllReduceAlgorithm::ring
                                                                       : AllReduceAlgorithm::reduce_then_broadcast;
  }
  switch (algorithm) {
    case AllReduceAlgorithm::automatic:
    case AllReduceAlgorithm::ring:
      ring_all_reduce_sum(*this, data, count);  // counted by send_recv
      return;
    case AllReduceAlgorithm::native:
      native_all_reduce(data, count);
      break;
    case AllReduceAlgorithm::reduce_then_broadcast:
      reduce_then_broadcast(data, count);
      break;
  }
  stats_.bytes_sent += count * sizeof(float);
  stats_.bytes_received += count * sizeof(float);
  stats_.messages_sent += 1;
}

void MpiGroup::reduce_then_broadcast(float* data, size_t count) {
  // Rank 0 sums every element once and everyone receives its bits. Segments overlap the
  // broadcast of one with the reduction of the next; every rank posts them in the same order
  // (reduce 0, reduce 1, broadcast 0, reduce 2, broadcast 1, ...) as MPI requires.
  const size_t segment = std::min(segment_elements_, kMaxCollectiveCount);
  const size_t segments = (count + segment - 1) / segment;
  std::vector<Pending> ops(2 * segments);  // reductions, then broadcasts
  Describe what = [&] { return fmt::format("all_reduce of {} floats over {}", count, describe_group()); };
  auto post = [&](size_t s, bool broadcast) {
    float* begin = data + s * segment;
    int n = int(std::min(segment, count - s * segment));
    Pending& op = ops[broadcast ? segments + s : s];
    int rc = broadcast ? MPI_Ibcast(begin, n, MPI_FLOAT, 0, comm_, &op.request)
                       : MPI_Ireduce(rank_ == 0 ? MPI_IN_PLACE : begin, begin, n, MPI_FLOAT, MPI_SUM, 0, comm_,
                                     &op.request);
    if (rc != MPI_SUCCESS) fail(ops, fmt::format("mpi: {}: {}", what(), error_text(rc)));
  };
  post(0, false);
  for (size_t s = 0; s < segments; ++s) {
    if (s + 1 < segments) post(s + 1, false);
    // A segment is broadcast from (and into) the buffer its reduction used, so wait for that.
    complete(std::span(&ops[s], 1), {}, what, ops);
    post(s, true);
  }
  complete(std::span(ops).subspan(segments), {}, what, ops);
}

void MpiGroup::native_all_reduce(float* data, size_t count) {
  Describe what = [&] { return fmt::format("all_reduce of {} floats over {}", count, describe_group()); };
  for (size_t begin = 0; begin < count; begin += kMaxCollectiveCount) {
    int n = int(std::min(kMaxCollectiveCount, count - begin));
    std::array<Pending, 1> ops;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, data + begin, n, MPI_FLOAT, MPI_SUM, comm_, &ops[0].request);
    if (rc != MPI_SUCCESS) fail({}, fmt::format("mpi: {}: {}", what(), error_text(rc)));
    complete(ops, {}, what);
  }
}

void MpiGroup::all_reduce_sum_bf16(uint16_t* data, size_t count) {
  CallScope scope(*this);
  if (size_ == 1 || count == 0) return;
  // Summed in f32 and rounded once, so the result does not depend on how many hops it took.
  std::vector<float> wide(count);
  for (size_t i = 0; i < count; ++i) wide[i] = bf16_to_f32(data[i]);
  all_reduce_sum(wide.data(), count);
  for (size_t i = 0; i < count; ++i) data[i] = f32_to_bf16(wide[i]);
}

void MpiGroup::all_gather(const void* mine, size_t bytes, void* all) {
  CallScope scope(*this);
  auto* out = static_cast<uint8_t*>(all);
  if (size_ == 1) {
    if (out != mine) std::memmove(out, mine, bytes);
    return;
  }
  Describe what = [&] { return fmt::format("all_gather of {} bytes per rank over {}", bytes, describe_group()); };
  ByteCount n = byte_count(bytes);
  const void* send = out + size_t(rank_) * bytes == mine ? MPI_IN_PLACE : mine;
  std::array<Pending, 1> ops;
  int rc = MPI_Iallgather(send, n.count, n.type, out, n.count, n.type, comm_, &ops[0].request);
  if (rc != MPI_SUCCESS) fail({}, fmt::format("mpi: {}: {}", what(), error_text(rc)));
  complete(ops, {}, what);
  stats_.bytes_sent += bytes;
  stats_.bytes_received += bytes * size_t(size_ - 1);
  stats_.messages_sent += 1;
}

void MpiGroup::barrier() {
  CallScope scope(*this);
  Describe what = [&] { return fmt::format("barrier over {}", describe_group()); };
  std::array<Pending, 1> ops;
  int rc = MPI_Ibarrier(comm_, &ops[0].request);
  if (rc != MPI_SUCCESS) fail({}, fmt::format("mpi: {}: {}", what(), error_text(rc)));
  complete(ops, {}, what);
}

std::unique_ptr<Group> MpiGroup::split(int color, int key) {
  CallScope scope(*this);
  Describe what = [&] { return fmt::format("split of {}", describe_group()); };
  // MPI_Comm_split cannot be bounded, so a bounded exchange first checks every rank is here;
  // it also lets any int be a color (MPI wants them >= 0): each color becomes its rank in order.
  std::vector<int32_t> all(2 * size_t(size_));
  int32_t mine[2] = {color, key};
  std::array<Pending, 1> ops;
  int rc = MPI_Iallgather(mine, 2, MPI_INT32_T, all.data(), 2, MPI_INT32_T, comm_, &ops[0].request);
  if (rc != MPI_SUCCESS) fail({}, fmt::format("mpi: {}: {}", what(), error_text(rc)));
  complete(ops, {}, what);
  std::vector<int32_t> colors;
  for (int r = 0; r < size_; ++r) colors.push_back(all[2 * size_t(r)]);
  std::sort(colors.begin(), colors.end());
  colors.erase(std::unique(colors.begin(), colors.end()), colors.end());
  int dense_color = int(std::lower_bound(colors.begin(), colors.end(), color) - colors.begin());
  MPI_Comm sub = MPI_COMM_NULL;
  rc = MPI_Comm_split(comm_, dense_color, key, &sub);
  if (rc != MPI_SUCCESS) fail({}, fmt::format("mpi: {}: {}", what(), error_text(rc)));
  return std::make_unique<MpiGroup>(sub, timeout_, peers_, false);
}

}  // namespace shardlm::comm::mpi
