// Programmatic dependent launch (Hopper): a kernel launched by launch_overlapping() may start
// while the kernel before it on the stream is still running. Until it calls wait_for_previous()
// it must neither read what earlier kernels write nor write anything; it may read what no kernel
// writes (the weights, a norm's scales). That is how a decode step hides part of its small
// kernels: while a norm or the attention runs, the next matrix product's blocks are already
// resident with their first weights in flight. Each kernel calls let_next_start() first so that
// the kernel after it can be scheduled as early as that. Measured on an H200 (decode, batch 1):
// 8b preset +3.5%, 1b +6%.
#pragma once
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "kernels/cuda/launch.h"

namespace shardlm::cuda::detail {

__device__ __forceinline__ void wait_for_previous() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void let_next_start() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// SHARDLM_CUDA_OVERLAP=0 launches every kernel after the one before it has finished (to compare).
inline bool overlap_launches() {
  static const bool on = [] {
    const char* v = std::getenv("SHARDLM_CUDA_OVERLAP");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
}

// With `shared_bytes` of dynamic shared memory per block.
template <class... Params, class... Args>
void launch_overlapping_shared(size_t shared_bytes, const char* name, void (*kernel)(Params...), dim3 grid,
                               dim3 block, cudaStream_t s, Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = overlap_launches() ? 1 : 0;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = s;
  config.attrs = &attribute;
  config.numAttrs = 1;
  cudaLaunchKernelEx(&config, kernel, Params(std::forward<Args>(args))...);
  check_launch(name);
}

template <class... Params, class... Args>
void launch_overlapping(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t s,
                        Args&&... args) {
  launch_overlapping_shared(0, name, kernel, grid, block, s, std::forward<Args>(args)...);
}

}  // namespace shardlm::cuda::detail
