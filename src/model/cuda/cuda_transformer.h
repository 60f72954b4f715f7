// The forward pass of model/transformer.h on one NVIDIA GPU: the rank's weights are copied to the
// device once, in their own dtype (f32, bf16, f16, q8_0, q4_0), the KV cache lives on the device
// under the same block ids as the host bookkeeping, and each call moves only the activations
// across PCIe: on the first stage not even those, but token ids (the embedding is on the device,
// shared with a tied lm_head), and back only the rows the caller reads. Tensor-parallel partial
// sums and pipeline hand-offs stay on the devices with a DeviceGroup (peer memory, NCCL), or go through the
// host (the runtime's all-reduce, x in and out) without one. Prefill's products run on the tensor
// cores (cuBLAS) where it can be loaded.
#pragma once
#include <memory>
#include <vector>

#include "model/forward_pass.h"
#include "model/weights.h"

namespace shardlm {

namespace cuda {
struct AttentionShape;
}

class CudaTransformer : public ForwardPass {
 public:
  // Runs on GPU rank % device count.
  CudaTransformer(const ModelWeights& weights, int rank);
  ~CudaTransformer() override;

  void set_all_reduce(AllReduce fn) override { all_reduce_ = std::move(fn); }
  void set_device_all_reduce(DeviceGroup* r) override { device_all_reduce_ = r; }
  void set_device_pipeline(DeviceGroup* group, int from, int to) override {
    pipeline_ = group, pipeline_from_ = from, pipeline_to_ = to;
  }
  int device_ordinal() const override { return device_; }
  int64_t free_memory_bytes() const override;
  std::string memory_name() const override { return "GPU " + std::to_string(device_); }
  const ModelConfig& config() const override { return w_.config; }
  int64_t cache_block_bytes() const override;
  KvCache make_cache(int64_t blocks) override;
  int64_t local_vocab() const override { return w_.slice.vocab_end - w_.slice.vocab_begin; }
  void run_layers(const int32_t* ids, float* x, std::span<const Segment> segments, KvCache& cache,
                  RowsRead read) override;
  void head(const float* x, std::span<const int64_t> rows, float* logits) override;
  void head_argmax(const float* x, std::span<const int64_t> rows, float* values, int32_t* ids) override;

  int64_t device_bytes() const override;

 private:
  void head_on_device(const float* x, std::span<const int64_t> rows);
  bool queue_next_step();
  cuda::AttentionShape attention_shape() const;
  struct Impl;
  const ModelWeights& w_;
  AllReduce all_reduce_;
  DeviceGroup* device_all_reduce_ = nullptr;
  DeviceGroup* pipeline_ = nullptr;
  int pipeline_from_ = -1, pipeline_to_ = -1;
  int device_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardlm
