// What a rank's runtime needs of a model slice, whatever runs it: the CPU Transformer
// (model/transformer.h) or the CUDA one (model/cuda/). Activations cross this interface as host
// f32 [tokens][hidden], so the comm backends and the scheduler are the same for both.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "formats/model_config.h"
#include "model/kv_cache.h"

namespace shardlm {

// Tokens [start, start + n_tokens) of the sequence in cache slot `slot`.
struct Segment {
  int32_t slot = 0;
  int64_t start = 0;
  int64_t n_tokens = 0;
};

// Rows of x that a caller reads after run_layers: every row (a stage that hands x on), or only
// `rows` (the last stage's sampled ones: a GPU then copies back just those). With `head_only` the
// caller reads them only through head() or head_argmax() on the same x, called next: a GPU may then
// leave them on the device (x's rows unwritten) and queue the head behind the layers without
// waiting for them.
struct RowsRead {
  bool all = true;
  std::span<const int64_t> rows;
  bool head_only = false;
  // The step's sequences take another step after this one unless a token ends them (none reaches
  // its budget here): a GPU may queue that step before the host has the token.
  bool sequences_go_on = false;
};

// Checks each segment's positions against the model and reserves them in the cache (shared by
// every ForwardPass::run_layers); returns the total tokens. Throws Error naming the positions.
int64_t reserve_segments(const ModelConfig& config, std::span<const Segment> segments, KvCache& cache);

// GPU ranks' links (comm/cuda_ipc/, comm/nccl/): tensor-parallel sums and pipeline hand-offs in
// device memory, ordered on the forward pass's stream, so activations never cross to the host
// between GPUs.
class DeviceGroup {
 public:
  virtual ~DeviceGroup() = default;
  // data[i] = sum over the group's ranks of data[i] (device memory, f32), queued on `stream`.
  virtual void sum(float* data, int64_t count, void* stream) = 0;
  // x[i] += that sum, data left as it was, where the link does both in one pass (the residual add
  // of a tensor-parallel layer without a kernel of its own); false: nothing queued, the caller
  // sums and adds. x[i] comes out as x[i] + the sum either way, bit for bit.
  virtual bool sum_into(const float* /*data*/, float* /*x*/, int64_t /*count*/, void* /*stream*/) { return false; }
  // Point to point, matched in order per pair of ranks (ranks of this group), queued on `stream`.
  virtual void send(int peer, const float* data, int64_t count, void* stream) = 0;
  virtual void recv(int peer, float* data, int64_t count, void* stream) = 0;
  // Blocks until `stream` has finished, bounded: a lost peer raises an error instead of a hang.
  virtual void wait(void* stream) = 0;
  // After wait() threw: ends the group's transfers for good, so that kernels waiting on a lost
  // peer stop. The pass first destroys the CUDA graphs that captured them (NCCL's abort waits
  // for those) and frees no memory before (freeing waits for the kernels).
  virtual void abort() {}
  // Seconds the group's operations of finished steps took on the GPU (waiting for peers
  // included), and the bytes this rank sent (a sum counts its buffer once).
  virtual double seconds() const = 0;
  virtual uint64_t bytes_sent() const = 0;

  // CUDA graphs. Between begin_capture() and end_capture() the operations queued are captured
  // into a graph rather than run; end_capture() says what they were, and replayed() after each
  // launch of that graph counts their bytes and has wait() add their times. A timed capture
  // records two events around each operation: event nodes cost microseconds at every launch, so
  // a caller keeps an untimed graph too and launches the timed one now and then, each launch
  // standing for `weight` launches.
  struct Captured {
    size_t first_event = 0, events = 0;
    uint64_t bytes = 0;
  };
  virtual void begin_capture(bool /*timed*/) {}
  virtual Captured end_capture() { return {}; }
  virtual void replayed(const Captured& /*captured*/, int /*weight*/) {}
};

class ForwardPass {
 public:
  virtual ~ForwardPass() = default;

  // Tensor parallel: sums partial layer outputs over the ranks of this stage (in place, identical
  // result on every rank). Required when the weights are a tensor-parallel slice.
  using AllReduce = std::function<void(float* data, int64_t count)>;
  virtual void set_all_reduce(AllReduce fn) = 0;
  // On a GPU, in place of set_all_reduce's host round trip (not owned; outlives the pass).
  virtual void set_device_all_reduce(DeviceGroup*) {}
  // Pipeline parallel on GPUs: x comes from rank `from` of `group` (the stage before; -1: from the
  // caller) and goes on to rank `to` (the stage after; -1: back to the caller) in device memory.
  // run_layers then neither reads x from the host nor writes it back but for the rows read.
  virtual void set_device_pipeline(DeviceGroup* /*group*/, int /*from*/, int /*to*/) {}
  // The GPU this pass runs on, -1 on the CPU.
  virtual int device_ordinal() const { return -1; }
  // Free bytes where this pass keeps its KV cache (the host's available memory, a GPU's free
  // memory; -1 where unknown), and that memory's name ("the host", "GPU 1").
  virtual int64_t free_memory_bytes() const;
  virtual std::string memory_name() const { return "the host"; }

  virtual const ModelConfig& config() const = 0;
  // Bytes one cache block costs on this rank, and a cache of `blocks` blocks for its layers
  // (KvCache::kDefaultBlockSize positions each).
  virtual int64_t cache_block_bytes() const = 0;
  virtual KvCache make_cache(int64_t blocks) = 0;
  // Logits this rank computes: lm_head rows vocab_begin..vocab_end.
  virtual int64_t local_vocab() const = 0;

  // Runs this rank's layers on x [total tokens][hidden] in place. The first stage passes the step's
  // token ids, whose embeddings are the input (x's contents are ignored; a GPU embeds on the
  // device, so ids cross to it instead of x); later stages pass null and x as received. The
  // segments' tokens are the rows of x in order; their keys/values go into the cache (reserved
  // here, growing each sequence). On return the rows of `read` hold the output; others may not.
  virtual void run_layers(const int32_t* ids, float* x, std::span<const Segment> segments, KvCache& cache,
                          RowsRead read) = 0;
  // Final norm and lm_head on the given rows of x: logits [rows][local_vocab()].
  virtual void head(const float* x, std::span<const int64_t> rows, float* logits) = 0;
  // Greedy decoding's part of head(): each row's largest logit and its local id (the lowest id of
  // equal ones). By default from head()'s logits; a GPU finds them where the logits are.
  virtual void head_argmax(const float* x, std::span<const int64_t> rows, float* values, int32_t* ids);

  // Accelerator memory this rank holds (weights and KV cache); 0 on the CPU.
  virtual int64_t device_bytes() const { return 0; }
};

}  // namespace shardlm
