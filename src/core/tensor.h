// A non-owning view of a tensor's bytes (usually inside a mapped file) with its dtype and shape.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace shardlm {

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // outermost first, as in safetensors/PyTorch
  const void* data = nullptr;
  int64_t nbytes = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t rows() const { return shape.empty() ? 1 : numel() / shape.back(); }
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
  const uint8_t* bytes() const { return static_cast<const uint8_t*>(data); }
  // Row r of a 2-D tensor (quantized rows are whole blocks).
  const void* row(int64_t r) const { return bytes() + r * dtype_bytes(dtype, cols()); }
};

std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace shardlm
