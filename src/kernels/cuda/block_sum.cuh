// The sum of one value per thread over a thread block, shared by the kernels that reduce a row
// (RMSNorm's sum of squares, in its own kernels and inside the streaming products).
#pragma once
#include <cuda_runtime.h>

namespace shardlm::cuda::detail {

// Every thread gets the block's sum of s. Called by all threads of the block (blockDim.x a
// multiple of 32); a caller that calls it again must __syncthreads() after reading the result.
__device__ inline float block_sum(float s) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x < 32) {
    s = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0f;
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x == 0) partial[0] = s;
  }
  __syncthreads();
  return partial[0];
}

}  // namespace shardlm::cuda::detail
