// Device memory owned by one object (cudaMalloc / cudaFree), grown on demand for scratch.
#pragma once
#include <cstddef>
#include <utility>

#include "kernels/cuda/check.h"

namespace shardlm::cuda {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) { grow(bytes); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }

  // At least `bytes` (contents not kept when it grows); true when it grew.
  bool grow(size_t bytes) {
    if (bytes <= bytes_) return false;
    if (p_) SHARDLM_CUDA_CHECK(cudaFree(p_));
    p_ = nullptr;
    bytes_ = 0;
    SHARDLM_CUDA_CHECK(cudaMalloc(&p_, bytes));
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

}  // namespace shardlm::cuda
