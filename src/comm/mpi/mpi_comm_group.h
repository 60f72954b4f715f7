// MpiGroup: Group over one MPI communicator that it owns. Internal to the mpi backend (and its
// tests and benchmark); the runtime sees only Group and make_mpi_world_group().
#pragma once
#include "comm/mpi/mpi_api.h"

#include <chrono>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/group.h"
#include "comm/mpi/mpi_requests.h"

namespace shardlm::comm::mpi {

// Who a world rank is, for error messages and for noticing that a peer on this host exited.
struct PeerIdentity {
  int pid = 0;
  std::string host;
  std::string pid_namespace;  // pids of two processes are comparable only within one namespace
};

struct WorldPeers {
  std::vector<PeerIdentity> by_world_rank;
  int my_world_rank = 0;
};

// How all_reduce sums. reduce_then_broadcast and ring give every rank the same bits by
// construction (each element is summed by one rank, whose bits everyone receives). MPI does not
// promise that for MPI_Allreduce (the standard only recommends it), so `native` is kept to
// measure against; Open MPI 4.1's libnbc happens to reduce in-place calls to rank 0 and
// broadcast, but a tuning parameter or another collective component may change that.
enum class AllReduceAlgorithm {
  automatic,              // ring for 2 ranks or >= 256 KB, else reduce_then_broadcast
  reduce_then_broadcast,  // MPI_Ireduce to rank 0 then MPI_Ibcast, pipelined in segments
  ring,                   // collectives.h's ring over this group's point-to-point calls
  native,                 // MPI_Iallreduce
};

class MpiGroup final : public Group {
 public:
  // Takes ownership of `comm` and frees it on destruction.
  MpiGroup(MPI_Comm comm, std::chrono::milliseconds timeout, std::shared_ptr<const WorldPeers> peers, bool is_world);
  ~MpiGroup() override;
  MpiGroup(const MpiGroup&) = delete;
  MpiGroup& operator=(const MpiGroup&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  void send(int peer, const void* data, size_t bytes) override;
  void recv(int peer, void* data, size_t bytes) override;
  void send_recv(int to, const void* send_data, size_t send_bytes, int from, void* recv_data,
                 size_t recv_bytes) override;

  // Collectives count their payload once each way in stats() (MPI hides the real traffic).
  void all_reduce_sum(float* data, size_t count) override;
  void all_reduce_sum_bf16(uint16_t* data, size_t count) override;
  void all_gather(const void* mine, size_t bytes, void* all) override;
  void barrier() override;
  std::unique_ptr<Group> split(int color, int key) override;

  CommStats stats() const override { return stats_; }
  void reset_stats() override { stats_ = {}; }

  void set_all_reduce_algorithm(AllReduceAlgorithm algorithm) { algorithm_ = algorithm; }
  // Elements per pipelined segment of reduce_then_broadcast.
  void set_segment_elements(size_t elements) { segment_elements_ = elements ? elements : 1; }
  // Messages above this many bytes travel as one element of a derived datatype, because MPI
  // counts are ints. Lowered only by tests, to reach that path with small buffers.
  void set_large_message_bytes(size_t bytes) { large_message_bytes_ = bytes; }

 private:
  class CallScope;
  friend class CallScope;

  struct ByteCount {
    MPI_Datatype type;
    int count;
  };
  using Describe = std::function<std::string()>;

  ByteCount byte_count(size_t bytes);
  void check_peer(int peer, const char* call) const;
  Pending post_send(int peer, const void* data, size_t bytes, const Describe& what);
  // A receive, posted by poll() once the message is seen to have exactly `bytes` bytes.
  Pending expect_message(int peer, void* data, size_t bytes);
  // Waits for `ops`; on failure abandons `all_ops` (the whole call), marks the group unusable
  // and throws CommError "mpi: <what>: <why>". `peers` are watched for exit (empty: all).
  void complete(std::span<Pending> ops, std::span<const int> peers, const Describe& what,
                std::span<Pending> all_ops = {});
  // A receive must get exactly the bytes asked for.
  void check_received(const Pending& op, size_t bytes, const Describe& what);
  [[noreturn]] void fail(std::span<Pending> ops, const std::string& message);
  void reduce_then_broadcast(float* data, size_t count);
  void native_all_reduce(float* data, size_t count);

  std::string describe_rank(int rank) const;
  std::string describe_group() const;
  int exited_peer(std::span<const int> peers) const;  // -1: none known

  MPI_Comm comm_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<const WorldPeers> peers_;
  bool is_world_;
  int rank_ = 0, size_ = 1;
  std::vector<int> world_rank_;  // of each rank of this group
  AllReduceAlgorithm algorithm_ = AllReduceAlgorithm::automatic;
  size_t segment_elements_ = 64 * 1024;
  size_t large_message_bytes_ = size_t(1) << 30;
  std::vector<MPI_Datatype> call_types_;  // derived types of the current call, freed at its end
  std::string broken_;             // the failure that made this group unusable
  bool has_abandoned_collectives_ = false;
  int call_depth_ = 0;
  CommStats stats_;
};

}  // namespace shardlm::comm::mpi
