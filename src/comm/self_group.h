// The group of one rank: a model on a single process runs the same rank code as a split one.
#pragma once
#include <cstring>

#include "comm/collectives.h"

namespace shardlm::comm {

class SelfGroup final : public Group {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "none"; }
  void send(int peer, const void*, size_t) override { fail_peer(peer); }
  void recv(int peer, void*, size_t) override { fail_peer(peer); }
  void send_recv(int to, const void*, size_t, int, void*, size_t) override { fail_peer(to); }
  void all_reduce_sum(float*, size_t) override {}
  void all_reduce_sum_bf16(uint16_t*, size_t) override {}
  void all_gather(const void* mine, size_t bytes, void* all) override {
    if (all != mine && bytes) std::memcpy(all, mine, bytes);
  }
  void barrier() override {}
  std::unique_ptr<Group> split(int, int) override { return std::make_unique<SelfGroup>(); }
  CommStats stats() const override { return {}; }
  void reset_stats() override {}

 private:
  [[noreturn]] static void fail_peer(int peer) { throw CommError("a single-rank run has no rank " + std::to_string(peer)); }
};

}  // namespace shardlm::comm
