// NCCL as the GPU ranks' links: tensor-parallel partial outputs summed and pipeline activations
// handed on in device memory, on the forward pass's stream, with no host round trip. NCCL is
// loaded at run time (dlopen), so the binary starts without it; the ranks' host Group carries
// NCCL's id and their agreement.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/device/timed_device_group.h"
#include "comm/group.h"

namespace shardlm::comm {

class NcclGroup : public TimedDeviceGroup {
 public:
  // Called by every rank of `group` at once (a collective on it), each with the GPU its pass runs
  // on; the NCCL ranks are `group`'s. All ranks get NCCL or all get null, with `why` saying why
  // (NCCL not found on some rank, two ranks on one GPU, or its start failed). NVLink multicast
  // stays off unless the environment turns it on (NCCL_NVLS_ENABLE).
  static std::unique_ptr<NcclGroup> create(Group& group, int device, std::chrono::seconds timeout, std::string* why);
  // create()'s two steps once the ranks agree: rank 0 makes an id (empty, with `why`, where NCCL
  // is missing) that the host group hands to the others, and each rank joins the group on it. A
  // rank waits at most `timeout` for the others to join (a rank lost before it started): then
  // CommError, its half-started communicator aborted.
  static std::vector<uint8_t> new_id(std::string* why);
  static std::unique_ptr<NcclGroup> join(const std::vector<uint8_t>& id, int rank, int size, int device,
                                         std::chrono::seconds timeout);
  ~NcclGroup() override;

  void sum(float* data, int64_t count, void* stream) override;
  void send(int peer, const float* data, int64_t count, void* stream) override;
  void recv(int peer, float* data, int64_t count, void* stream) override;
  void wait(void* stream) override;
  void abort() override;
  void enqueue_sum(float* data, int64_t count, void* stream) override;
  void check() override;

 private:
  explicit NcclGroup(std::chrono::seconds timeout) : TimedDeviceGroup(timeout) {}
  // Checks an NCCL call's result, waiting (at most timeout_) for one still in progress.
  void settle(int result, const char* what);
  void* comm_ = nullptr;  // ncclComm_t
  bool failed_ = false;  // a call or wait() failed: the communicator is aborted, never destroyed
  int rank_ = 0, size_ = 0;
};

}  // namespace shardlm::comm
