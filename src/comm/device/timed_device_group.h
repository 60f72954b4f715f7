// What every GPU link (comm/nccl/, comm/cuda_ipc/) does alike: its operations on the pass's stream
// timed by CUDA events and their bytes counted, in plain launches and in captured CUDA graphs, and
// a step's stream waited for within the group's timeout.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/forward_pass.h"

namespace shardlm::comm {

class TimedDeviceGroup : public DeviceGroup {
 public:
  ~TimedDeviceGroup() override;
  double seconds() const override { return seconds_; }
  uint64_t bytes_sent() const override { return bytes_sent_; }
  void begin_capture(bool timed) override;
  Captured end_capture() override;
  void replayed(const Captured& captured, int weight) override;

  // For a group that hands some of its sums to this one (comm/cuda_ipc/ its large ones to NCCL):
  // a sum queued without timing or counting, and this link's own errors raised (CommError).
  virtual void enqueue_sum(float* data, int64_t count, void* stream);
  virtual void check() {}

 protected:
  explicit TimedDeviceGroup(std::chrono::seconds timeout) : timeout_(timeout) {}
  // Queues call(stream) between two timing events on `stream` (none in an untimed capture),
  // counting `bytes` sent.
  void timed(void* stream, uint64_t bytes, const std::function<void(void*)>& call);
  // Blocks until `stream` has finished, calling poll() between asks (it throws on the link's own
  // errors). Past the timeout: on_timeout(), then CommError "<who>: a step's transfers did not
  // finish in N s (a peer lost?)". Then adds the step's timed operations to seconds().
  void wait_for(void* stream, const std::string& who, const std::function<void()>& poll,
                const std::function<void()>& on_timeout);
  std::chrono::seconds timeout_{};

 private:
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
  Captured capture_;
};

}  // namespace shardlm::comm
