#include "cli/gpu_ceilings.h"

#include "core/error.h"
#include "core/log.h"
#if SHARDLM_HAVE_CUDA
#include "kernels/cuda/ops.h"
#include "kernels/cuda/tensor_core_gemm.h"
#endif

namespace shardlm::cli {

#if SHARDLM_HAVE_CUDA
GpuCeilings measure_gpu_ceilings() {
  log_info("bench: measuring GPU 0's read and copy bandwidth and bf16 matrix-product FLOP/s");
  GpuCeilings c;
  c.name = cuda::device_name(0);
  c.read_bw = cuda::measure_read_bandwidth(0);
  c.copy_bw = cuda::measure_copy_bandwidth(0);
  std::string why;
  c.bf16_flops = cuda::TensorCoreGemm::measure_bf16_flops(0, &why);
  if (c.bf16_flops == 0) log_info("bench: no bf16 FLOP/s ceiling: {}", why);
  return c;
}

double gpu_decode_floor_seconds(const std::vector<size_t>& products) {
  try {
    return cuda::measure_read_seconds(0, products);
  } catch (const std::exception& e) {  // the run's figures stand without it
    log_info("bench: no decode floor: {}", e.what());
    return 0;
  }
}
#else
GpuCeilings measure_gpu_ceilings() { fail("--device cuda: this shardlm was built without CUDA (SHARDLM_CUDA=OFF)"); }
double gpu_decode_floor_seconds(const std::vector<size_t>&) { return 0; }
#endif

}  // namespace shardlm::cli
