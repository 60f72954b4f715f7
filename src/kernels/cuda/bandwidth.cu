// The read-bandwidth probe behind `bench --device cuda`: every thread sums 16-byte loads in a
// grid-stride loop, one float per block is written so the reads cannot be dropped.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"

namespace shardlm::cuda {
namespace {

__global__ void read_kernel(const uint4* data, size_t n, float* out) {
  uint32_t acc = 0;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = data[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) out[blockIdx.x] = float(acc);  // practically never: keeps the loads alive
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) detail::fail_with(what);
}

}  // namespace

double measure_read_bandwidth(int device, size_t bytes) {
  check(cudaSetDevice(device), "CUDA bandwidth probe: cudaSetDevice failed");
  void* data = nullptr;
  float* out = nullptr;
  check(cudaMalloc(&data, bytes), "CUDA bandwidth probe: cannot allocate its buffer");
  check(cudaMalloc(&out, 4096 * sizeof(float)), "CUDA bandwidth probe: cannot allocate its output");
  check(cudaMemset(data, 1, bytes), "CUDA bandwidth probe: cudaMemset failed");
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const unsigned blocks = unsigned(std::min(4096, sms * 8));
  const double seconds = detail::median_seconds(nullptr, 5, [&] {
    read_kernel<<<blocks, 512>>>(static_cast<const uint4*>(data), bytes / 16, out);
  });
  cudaFree(data);
  cudaFree(out);
  return double(bytes) / seconds;
}

}  // namespace shardlm::cuda
