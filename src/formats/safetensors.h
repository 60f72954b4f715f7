// safetensors: an 8-byte little-endian header length, a JSON header of
// {name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__": {...}}, then the data.
// Every offset, shape and dtype is checked against the file before any byte is used.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace shardlm {

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // throws Error naming the path
  // Parses an in-memory image (used by the fuzzer); `bytes` must outlive the object.
  static SafetensorsFile from_memory(const uint8_t* bytes, size_t size, const std::string& name);

  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const MappedFile& file() const { return file_; }

 private:
  SafetensorsFile() = default;
  void parse(const uint8_t* bytes, size_t size, const std::string& name);
  MappedFile file_;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  std::string name;
  DType dtype;  // f32, f16 or bf16
  std::vector<int64_t> shape;
  const void* data = nullptr;  // the bytes, or:
  // fills dst with the tensor's bytes when it is written, so a generator or converter need not
  // hold every tensor in memory at once.
  std::function<void(uint8_t* dst)> fill;
  int64_t nbytes() const;
};

// Writes a safetensors file (tensors in the given order, each 8-byte aligned as the reference
// writer does). Writes to a temporary name first, so a failure never leaves a truncated file.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace shardlm
