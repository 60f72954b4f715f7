// Turns a CUDA runtime error into shardlm::Error with the call that failed.
#pragma once
#include <cuda_runtime_api.h>

#include "core/error.h"

#define SHARDLM_CUDA_CHECK(call)                                                                          \
  do {                                                                                                     \
    const cudaError_t shardlm_cuda_err = (call);                                                          \
    if (shardlm_cuda_err != cudaSuccess)                                                                   \
      ::shardlm::fail("CUDA: {} failed: {} ({})", #call, cudaGetErrorString(shardlm_cuda_err),              \
                      int(shardlm_cuda_err));                                                              \
  } while (0)
