#include "kernels/cuda/launch.h"

#include <algorithm>
#include <vector>

#include "kernels/cuda/check.h"
#include "kernels/cuda/ops.h"

namespace shardlm::cuda::detail {

void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) fail("CUDA: launching {} failed: {} ({})", kernel, cudaGetErrorString(err), int(err));
}

void fail_with(const char* message) { fail("{}", message); }

double median_seconds(CUstream_st* s, int passes, const std::function<void()>& run) {
  cudaEvent_t start, stop;
  SHARDLM_CUDA_CHECK(cudaEventCreate(&start));
  SHARDLM_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> seconds;
  for (int pass = 0; pass <= passes; ++pass) {
    SHARDLM_CUDA_CHECK(cudaEventRecord(start, s));
    run();
    SHARDLM_CUDA_CHECK(cudaEventRecord(stop, s));
    SHARDLM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    SHARDLM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (pass > 0) seconds.push_back(double(ms) / 1e3);  // pass 0 warms up
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}

}  // namespace shardlm::cuda::detail

namespace shardlm::cuda {

std::string device_name(int device) {
  cudaDeviceProp p{};
  SHARDLM_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return fmt::format("{}, {} SMs, {:.1f} GB", p.name, p.multiProcessorCount, double(p.totalGlobalMem) / 1e9);
}

}  // namespace shardlm::cuda
