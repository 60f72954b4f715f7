#include "kernels/cuda/launch.h"

#include "kernels/cuda/check.h"

namespace shardlm::cuda::detail {

void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) fail("CUDA: launching {} failed: {} ({})", kernel, cudaGetErrorString(err), int(err));
}

void fail_with(const char* message) { fail("{}", message); }

}  // namespace shardlm::cuda::detail
