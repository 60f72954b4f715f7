// Tensor-parallel sums between the GPUs of one host without NCCL: every rank maps the others'
// device memory (CUDA IPC over NVLink or PCIe peer access) and a sum is one kernel
// (kernels/cuda/peer_sum.h). Against NCCL it saves, outside graphs, a host thread NCCL starts for
// every call on a nonblocking communicator (tens of microseconds: prompt chunks) and, inside
// graphs, the latency of a small message. Only sums: pipelines hand off through NCCL. Sums larger
// than a staging piece (4 MB) go to another link where one is given (NCCL: a one-shot push through
// the SMs moves 16-32 MB slower than NCCL's ring; 2K-token prompts in one step, two H200s).
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/device/timed_device_group.h"
#include "comm/group.h"

namespace shardlm::comm {

// What each rank tells the others before they map each other's memory (create() gathers them).
struct PeerOffer {
  char boot_id[48] = {};  // the kernel's boot id: ranks with the same one share a host
  char bus_id[32] = {};   // the rank's GPU (PCI address)
  int32_t wanted = 0;     // SHARDLM_PEER_SUMS is not 0 there
  int32_t sms = 0;        // the GPU's SMs: a sum's grid is at most the fewest of the group's
};
// Why these offers rule out peer memory, or "": ranks on different hosts, sharing a GPU, a GPU
// that does not say its PCI address or SM count, or a rank that turned it off.
std::string peer_refusal(const std::vector<PeerOffer>& offers);

class PeerGroup : public TimedDeviceGroup {
 public:
  // Called by every rank of `group` at once (collectives on it), each with its pass's GPU. All get
  // a PeerGroup or all get null with `why`: ranks on different hosts or sharing a GPU, GPUs that
  // cannot reach each other's memory, a mapping that failed, or SHARDLM_PEER_SUMS=0.
  static std::unique_ptr<PeerGroup> create(Group& group, int device, std::chrono::seconds timeout, std::string* why);
  ~PeerGroup() override;

  void sum(float* data, int64_t count, void* stream) override;
  bool sum_into(const float* data, float* x, int64_t count, void* stream) override;
  void send(int peer, const float* data, int64_t count, void* stream) override;
  void recv(int peer, float* data, int64_t count, void* stream) override;
  void wait(void* stream) override;
  void abort() override;
  // Sums of more than a staging piece are queued on `large` (not owned; it must outlive this).
  void send_large_sums_to(TimedDeviceGroup* large) { large_ = large; }

 private:
  explicit PeerGroup(std::chrono::seconds timeout) : TimedDeviceGroup(timeout) {}
  // Queues the kernels of a sum of `data` (into `x` where given, else in place), a piece each.
  void queue(float* data, float* x, int64_t count, void* stream);
  bool goes_to_large(int64_t count) const;  // a sum over a staging piece, with a link for those
  void refuse_after_failure() const;         // CommError once the group gave up
  // Ends every sum's wait on the GPU and refuses further sums (a lost peer, an error).
  void stop_waiting();
  int rank_ = 0, size_ = 0, device_ = 0, max_blocks_ = 1;
  char* region_ = nullptr;             // this rank's, which the others map
  std::vector<char*> mapped_;          // the others' regions as mapped here (null at this rank)
  char** regions_on_device_ = nullptr;  // [size_]: every region, this one included
  int* abort_word_ = nullptr;           // host memory the kernels read: nonzero ends their waits
  int* abort_on_device_ = nullptr;
  bool failed_ = false;  // timed out or aborted: no more sums
  TimedDeviceGroup* large_ = nullptr;
};

}  // namespace shardlm::comm
