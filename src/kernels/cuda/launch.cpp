#include "kernels/cuda/launch.h"

#include "kernels/cuda/check.h"
#include "kernels/cuda/ops.h"

namespace shardlm::cuda::detail {

void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) fail("CUDA: launching {} failed: {} ({})", kernel, cudaGetErrorString(err), int(err));
}

void fail_with(const char* message) { fail("{}", message); }

}  // namespace shardlm::cuda::detail

namespace shardlm::cuda {

std::string device_name(int device) {
  cudaDeviceProp p{};
  SHARDLM_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return fmt::format("{}, {} SMs, {:.1f} GB", p.name, p.multiProcessorCount, double(p.totalGlobalMem) / 1e9);
}

}  // namespace shardlm::cuda
