// Collectives written once over a group's point-to-point calls, for backends (and sub-groups)
// that have no faster native way. Ring algorithms: reduce-scatter then all-gather, so each
// element is summed by exactly one rank in one fixed order and every rank ends with the same bits.
#pragma once
#include <memory>
#include <vector>

#include "comm/group.h"

namespace shardlm::comm {

void ring_all_reduce_sum(Group& g, float* data, size_t count);
void ring_all_reduce_sum_bf16(Group& g, uint16_t* data, size_t count);
void ring_all_gather(Group& g, const void* mine, size_t bytes, void* all);
// Dissemination barrier: log2(size) rounds of one-byte messages.
void dissemination_barrier(Group& g);

// The members of `parent` (in order) as a group of their own. Point-to-point calls go through
// the parent with ranks translated; collectives use the ring algorithms above. Any backend can
// return this from split().
class SubGroup final : public Group {
 public:
  SubGroup(Group& parent, std::vector<int> members);
  int rank() const override { return rank_; }
  int size() const override { return int(members_.size()); }
  std::string backend() const override { return parent_.backend(); }
  void send(int peer, const void* data, size_t bytes) override;
  void recv(int peer, void* data, size_t bytes) override;
  void send_recv(int to, const void* send_data, size_t send_bytes, int from, void* recv_data, size_t recv_bytes) override;
  void all_reduce_sum(float* data, size_t count) override { ring_all_reduce_sum(*this, data, count); }
  void all_reduce_sum_bf16(uint16_t* data, size_t count) override { ring_all_reduce_sum_bf16(*this, data, count); }
  void all_gather(const void* mine, size_t bytes, void* all) override { ring_all_gather(*this, mine, bytes, all); }
  void barrier() override { dissemination_barrier(*this); }
  std::unique_ptr<Group> split(int color, int key) override;
  CommStats stats() const override { return stats_; }
  void reset_stats() override { stats_ = {}; }

 private:
  Group& parent_;
  std::vector<int> members_;  // parent ranks
  int rank_;
  CommStats stats_;
};

// split() for any group: all-gathers (color, key), picks this rank's members, returns a SubGroup.
std::unique_ptr<Group> split_by_color(Group& g, int color, int key);

}  // namespace shardlm::comm
