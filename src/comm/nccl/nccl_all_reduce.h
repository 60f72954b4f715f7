// NCCL as the tensor-parallel all-reduce of GPU ranks: partial outputs are summed in device memory
// on the forward pass's stream, with no host round trip. NCCL is loaded at run time (dlopen), so
// the binary starts without it; the ranks' host Group carries NCCL's id and their agreement.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "comm/group.h"
#include "model/forward_pass.h"

namespace shardlm::comm {

class NcclAllReduce : public DeviceAllReduce {
 public:
  // Called by every rank of `group` at once (a collective on it), each with the GPU its pass runs
  // on. All ranks get NCCL or all get null, with `why` saying why (NCCL not found on some rank,
  // two ranks on one GPU, or its start failed). NVLink multicast stays off unless the
  // environment turns it on (NCCL_NVLS_ENABLE).
  static std::unique_ptr<NcclAllReduce> create(Group& group, int device, std::chrono::seconds timeout,
                                               std::string* why);
  ~NcclAllReduce() override;

  void sum(float* data, int64_t count, void* stream) override;
  void wait(void* stream) override;
  double seconds() const override { return seconds_; }

 private:
  NcclAllReduce() = default;
  void* comm_ = nullptr;  // ncclComm_t
  std::chrono::seconds timeout_{};
  std::vector<std::pair<void*, void*>> events_;  // (start, end) of each sum of the step
  size_t used_events_ = 0;
  double seconds_ = 0;
  int rank_ = 0;
};

}  // namespace shardlm::comm
