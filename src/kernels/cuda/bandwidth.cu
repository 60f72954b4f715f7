// The bandwidth probes behind `bench --device cuda`: the read ceiling and the floor of a step that
// reads each matrix with a kernel of its own (every thread sums 16-byte loads in a grid-stride
// loop, one float per block is written so the reads cannot be dropped), and the copy bandwidth
// (the driver's device-to-device copy, read plus written bytes, as bandwidthTest and nvbandwidth
// report it).
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <vector>

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

// A probe's buffer on `device` (set to ones) and the blocks' outputs, freed when it goes.
struct ReadProbe {
  void* data = nullptr;
  float* out = nullptr;
  unsigned blocks = 0;
  ReadProbe(int device, size_t bytes) {
    try {
      check(cudaSetDevice(device), "CUDA bandwidth probe: cudaSetDevice failed");
      check(cudaMalloc(&data, bytes), "CUDA bandwidth probe: cannot allocate its buffer");
      check(cudaMalloc(&out, 4096 * sizeof(float)), "CUDA bandwidth probe: cannot allocate its output");
      check(cudaMemset(data, 1, bytes), "CUDA bandwidth probe: cudaMemset failed");
    } catch (...) {
      free();
      throw;
    }
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    blocks = unsigned(std::min(4096, sms * 8));
  }
  ~ReadProbe() { free(); }
  void free() {
    cudaFree(data);
    cudaFree(out);
    data = out = nullptr;
  }
  // One kernel reading `count` 16-byte words from word `first` on.
  void read(size_t first, size_t count, cudaStream_t s = nullptr) const {
    read_kernel<<<blocks, 512, 0, s>>>(static_cast<const uint4*>(data) + first, count, out);
  }
};

}  // namespace

double measure_read_bandwidth(int device, size_t bytes) {
  const ReadProbe probe(device, bytes);
  return double(bytes) / detail::median_seconds(nullptr, 5, [&] { probe.read(0, bytes / 16); });
}

double measure_copy_bandwidth(int device, size_t bytes) {
  struct Buffers {  // freed however the probe ends
    void* from = nullptr;
    void* to = nullptr;
    ~Buffers() {
      cudaFree(from);
      cudaFree(to);
    }
  } b;
  if (bytes < (size_t(1) << 20)) detail::fail_with("CUDA copy-bandwidth probe: a copy under 1 MB says nothing of the bandwidth");
  check(cudaSetDevice(device), "CUDA copy-bandwidth probe: cudaSetDevice failed");
  check(cudaMalloc(&b.from, bytes), "CUDA copy-bandwidth probe: cannot allocate its source");
  check(cudaMalloc(&b.to, bytes), "CUDA copy-bandwidth probe: cannot allocate its destination");
  check(cudaMemset(b.from, 1, bytes), "CUDA copy-bandwidth probe: cudaMemset failed");
  cudaError_t copied = cudaSuccess;
  const double seconds = detail::median_seconds(nullptr, 5, [&] {
    const cudaError_t e = cudaMemcpyAsync(b.to, b.from, bytes, cudaMemcpyDeviceToDevice);
    if (copied == cudaSuccess) copied = e;
  });
  check(copied, "CUDA copy-bandwidth probe: the copy failed");
  return 2.0 * double(bytes) / seconds;  // every byte is read once and written once
}

double measure_read_seconds(int device, const std::vector<size_t>& sizes) {
  if (sizes.empty()) return 0;
  // Room for many small reads, each launch reading the next region, so that L2 (50-60 MB) holds
  // none of it from the launch before; a read of over half the buffer (512 MB and more) rereads
  // one region, which passes through L2 too fast to find itself there.
  const size_t largest = *std::max_element(sizes.begin(), sizes.end());
  const size_t bytes = std::max((largest + 15) / 16 * 16, size_t(1) << 30);
  const ReadProbe probe(device, bytes);
  // The launches of each size captured in a CUDA graph, as a decode step's are: the GPU's time
  // between them, not the host's.
  cudaStream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "CUDA bandwidth probe: cannot create a stream");
  std::map<size_t, double> seconds;  // each size once: a model's layers repeat theirs
  cudaError_t failed = cudaSuccess;
  for (size_t size : sizes) {
    if (seconds.count(size) || size < 16) continue;
    const size_t n = size / 16, regions = bytes / (n * 16);
    const int launches = int(std::min<size_t>(64, std::max<size_t>(regions, 8)));
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    failed = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
    if (failed == cudaSuccess) {
      for (int i = 0; i < launches; ++i) probe.read(size_t(i) % regions * n, n, stream);
      failed = cudaStreamEndCapture(stream, &graph);
    }
    if (failed == cudaSuccess) failed = cudaGraphInstantiate(&exec, graph, 0);
    if (failed == cudaSuccess)
      seconds[size] = detail::median_seconds(stream, 5, [&] { cudaGraphLaunch(exec, stream); }) / launches;
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    if (failed != cudaSuccess) break;
  }
  cudaStreamDestroy(stream);
  check(failed, "CUDA bandwidth probe: cannot capture its reads in a graph");
  double total = 0;
  for (size_t size : sizes) total += size < 16 ? 0 : seconds[size];
  return total;
}

}  // namespace shardlm::cuda
