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

#include "comm/group.h"
#include "model/forward_pass.h"

namespace shardlm::comm {

class NcclGroup : public DeviceGroup {
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
  double seconds() const override { return seconds_; }
  uint64_t bytes_sent() const override { return bytes_sent_; }
  void begin_capture(bool timed) override;
  Captured end_capture() override;
  void replayed(const Captured& captured, int weight) override;

 private:
  NcclGroup() = default;
  // Runs one NCCL call that sends `bytes`, between two timing events on `stream`.
  template <class F>
  void timed(void* stream, uint64_t bytes, F&& call);
  // Checks an NCCL call's result, waiting (at most timeout_) for one still in progress.
  void settle(int result, const char* what);
  void* comm_ = nullptr;  // ncclComm_t
  std::chrono::seconds timeout_{};
  // Each operation of the step, in order: its start and end events (cudaEvent_t) and how many
  // launches its time stands for. Graphs record the same events (steps follow one another, each
  // finished by wait()).
  struct Timing {
    void* start;
    void* end;
    int weight;
  };
  std::vector<Timing> events_;
  size_t used_events_ = 0;
  double seconds_ = 0;
  uint64_t bytes_sent_ = 0;
  bool capturing_ = false, capture_timed_ = false;
  bool failed_ = false;  // a call or wait() failed: the communicator is aborted, never destroyed
  Captured capture_;
  int rank_ = 0, size_ = 0;
};

}  // namespace shardlm::comm
