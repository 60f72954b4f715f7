#include "comm/device/timed_device_group.h"

#include <cuda_runtime_api.h>

#include <thread>

#include "comm/group.h"
#include "core/error.h"

namespace shardlm::comm {
namespace {
void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA: {} failed: {}", what, cudaGetErrorString(e));
}
}  // namespace

TimedDeviceGroup::~TimedDeviceGroup() {
  for (const Timing& t : events_) cudaEventDestroy(cudaEvent_t(t.start)), cudaEventDestroy(cudaEvent_t(t.end));
}

void TimedDeviceGroup::enqueue_sum(float*, int64_t, void*) { fail("internal: this device group cannot sum for another"); }

void TimedDeviceGroup::timed(void* stream, uint64_t bytes, const std::function<void(void*)>& call) {
  const cudaStream_t s = cudaStream_t(stream);
  if (capturing_) capture_.bytes += bytes;
  else bytes_sent_ += bytes;
  if (capturing_ && !capture_timed_) return call(s);
  if (used_events_ == events_.size()) {
    cudaEvent_t a, b;
    check_cuda(cudaEventCreate(&a), "cudaEventCreate");
    check_cuda(cudaEventCreate(&b), "cudaEventCreate");
    events_.push_back({a, b, 1});
  }
  Timing& t = events_[used_events_++];
  t.weight = 1;
  // Captured, the events become nodes of the graph, recorded at every launch.
  const unsigned flags = capturing_ ? cudaEventRecordExternal : cudaEventRecordDefault;
  check_cuda(cudaEventRecordWithFlags(cudaEvent_t(t.start), s, flags), "cudaEventRecord");
  call(s);
  check_cuda(cudaEventRecordWithFlags(cudaEvent_t(t.end), s, flags), "cudaEventRecord");
}

void TimedDeviceGroup::begin_capture(bool timed) {
  capturing_ = true, capture_timed_ = timed;
  capture_ = {used_events_, 0, 0};
}

DeviceGroup::Captured TimedDeviceGroup::end_capture() {
  capturing_ = false;
  capture_.events = used_events_ - capture_.first_event;
  used_events_ = capture_.first_event;  // nothing ran yet
  return capture_;
}

void TimedDeviceGroup::replayed(const Captured& c, int weight) {
  SHARDLM_CHECK(c.first_event == used_events_ && c.first_event + c.events <= events_.size(),
                "internal: a CUDA graph's device-group operations launched out of their captured order");
  for (size_t i = 0; i < c.events; ++i) events_[used_events_++].weight = weight;
  bytes_sent_ += c.bytes;
}

void TimedDeviceGroup::wait_for(void* stream, const std::string& who, const std::function<void()>& poll,
                                const std::function<void()>& on_timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  for (;;) {
    const cudaError_t e = cudaStreamQuery(cudaStream_t(stream));
    if (e == cudaSuccess) break;
    if (e != cudaErrorNotReady) check_cuda(e, "a step's kernels");
    poll();
    if (std::chrono::steady_clock::now() > deadline) {
      on_timeout();
      throw CommError(
          fmt::format("{}: a step's transfers did not finish in {} s (a peer lost?)", who, timeout_.count()));
    }
    std::this_thread::yield();
  }
  for (size_t i = 0; i < used_events_; ++i) {
    const Timing& t = events_[i];
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, cudaEvent_t(t.start), cudaEvent_t(t.end)), "cudaEventElapsedTime");
    seconds_ += t.weight * ms / 1e3;
  }
  used_events_ = 0;
}

}  // namespace shardlm::comm
