// Device memory (cudaMalloc) and page-locked host memory (cudaMallocHost) owned by one object.
#pragma once
#include <cstddef>
#include <utility>

#include "kernels/cuda/check.h"

namespace shardlm::cuda {

// Memory of one kind owned by one object, grown on demand for scratch.
template <class Memory>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t bytes) { grow(bytes); }
  Buffer(Buffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~Buffer() {
    if (p_) Memory::release(p_);
  }

  // At least `bytes` (contents not kept when it grows); true when it grew.
  bool grow(size_t bytes) {
    if (bytes <= bytes_) return false;
    if (p_) Memory::release(p_);
    p_ = nullptr;
    bytes_ = 0;
    p_ = Memory::allocate(bytes);
    bytes_ = bytes;
    return true;
  }
  template <class T = void>
  T* get() const {
    return static_cast<T*>(p_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

struct DeviceMemory {  // cudaMalloc
  static void* allocate(size_t bytes) {
    void* p = nullptr;
    SHARDLM_CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
  }
  static void release(void* p) { cudaFree(p); }
};
// Page-locked host memory (cudaMallocHost): a copy from or to it is one asynchronous DMA, where
// pageable memory makes every small copy a synchronous staging round trip.
struct PinnedMemory {
  static void* allocate(size_t bytes) {
    void* p = nullptr;
    SHARDLM_CUDA_CHECK(cudaMallocHost(&p, bytes));
    return p;
  }
  static void release(void* p) { cudaFreeHost(p); }
};

using DeviceBuffer = Buffer<DeviceMemory>;
using PinnedBuffer = Buffer<PinnedMemory>;

}  // namespace shardlm::cuda
