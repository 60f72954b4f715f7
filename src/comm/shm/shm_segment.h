// Creating, joining and mapping the shared segment of one group.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/shm/shm_layout.h"

namespace shardlm::comm::shm {

// The mapping of a group's segment after every rank has attached (and it has been unlinked).
class Segment {
 public:
  // Creates or opens `name`, claims `rank`, and waits until all `size` ranks have claimed theirs.
  // On any failure it leaves nothing in /dev/shm and throws CommError (naming the missing or dead
  // ranks); the other ranks then fail fast rather than at their timeout.
  static Segment join(const std::string& name, int rank, int size, std::chrono::milliseconds timeout);

  Segment(Segment&& other) noexcept;
  Segment& operator=(Segment&&) = delete;
  Segment(const Segment&) = delete;
  ~Segment();

  const Layout& layout() const { return layout_; }
  uint8_t* base() const { return base_; }
  // Every rank's pid, as the ranks wrote them into the segment.
  const std::vector<int32_t>& pids() const { return pids_; }

  SegmentHeader& header() const { return *reinterpret_cast<SegmentHeader*>(base_); }
  RankWake* wakes() const { return reinterpret_cast<RankWake*>(base_ + layout_.ranks_offset); }
  Arrival& arrival(int rank, int context) const {
    return reinterpret_cast<Arrival*>(base_ + layout_.arrivals_offset)[layout_.arrival_index(rank, context)];
  }
  RingControl& ring_control(int from, int to) const {
    return reinterpret_cast<RingControl*>(base_ + layout_.ring_controls_offset)[layout_.ring_index(from, to)];
  }
  uint8_t* ring_data(int from, int to) const {
    return base_ + layout_.rings_offset + size_t(layout_.ring_index(from, to)) * layout_.ring_bytes;
  }
  uint8_t* slot(int rank, int context, int buffer) const { return base_ + layout_.slot_offset(rank, context, buffer); }

 private:
  Segment(uint8_t* base, Layout layout, std::vector<int32_t> pids)
      : base_(base), layout_(layout), pids_(std::move(pids)) {}
  uint8_t* base_;
  Layout layout_;
  std::vector<int32_t> pids_;
};

}  // namespace shardlm::comm::shm
