// The ceilings of `bench --device cuda` and of a GPU sweep, measured on GPU 0: its read
// bandwidth (a decode step's true ceiling: it only reads), its copy bandwidth (read + written
// bytes of a device-to-device copy, as bandwidthTest and nvbandwidth report it) and its bf16
// matrix-product FLOP/s (prefill's).
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace shardlm::cli {

struct GpuCeilings {
  std::string name;  // "NVIDIA H200, 132 SMs, 150.1 GB"
  double read_bw = 0, copy_bw = 0;
  double bf16_flops = 0;  // 0 without cuBLAS (logged)
};
// Fails with the reason on a build without CUDA or a machine without a usable GPU.
GpuCeilings measure_gpu_ceilings();
// Seconds a decode step would take if each of its matrix products (`products` bytes) were read by
// a kernel of its own and nothing else ran; 0 where it cannot be measured (logged).
double gpu_decode_floor_seconds(const std::vector<size_t>& products);

}  // namespace shardlm::cli
