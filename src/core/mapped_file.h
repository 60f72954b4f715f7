// A read-only memory map of a whole file. Weights are read through this so a process only
// faults in the pages of the tensors it touches (a pipeline stage touches only its layers).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace shardlm {

class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);  // throws Error naming the path
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Asks the kernel to read [offset, offset+len) ahead: used when a rank loads its slice.
  void prefetch(size_t offset, size_t len) const;

 private:
  void release();
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace shardlm
