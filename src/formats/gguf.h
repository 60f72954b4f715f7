// GGUF (llama.cpp's format, version 2 and 3): header, typed metadata, tensor infos, aligned data.
// Every count, length, offset and shape is checked against the file size before use.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"
#include "formats/model_config.h"
#include "formats/tokenizer_spec.h"

namespace shardlm {

// One metadata value. Arrays keep their element type; numbers are widened.
struct GgufValue {
  enum class Kind { UInt, Int, Float, Bool, String, Array };
  Kind kind = Kind::UInt;
  uint32_t gguf_type = 0;  // the GGUF type code as stored (for arrays: the element type)
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::vector<std::string> strings;  // array of strings
  std::vector<double> numbers;       // array of numbers (exact for |n| < 2^53)
};

class GgufFile {
 public:
  explicit GgufFile(const std::string& path);  // throws Error naming the path
  static GgufFile from_memory(const uint8_t* bytes, size_t size, const std::string& name);

  uint32_t version() const { return version_; }
  // Tensors with PyTorch-order shapes (GGUF's ne[] reversed), dtype mapped to ours.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find(const std::string& name) const;
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const GgufValue* get(const std::string& key) const;
  std::optional<int64_t> get_int(const std::string& key) const;
  std::optional<double> get_float(const std::string& key) const;
  std::optional<std::string> get_string(const std::string& key) const;
  const std::string& path() const { return name_; }

 private:
  GgufFile() = default;
  void parse(const uint8_t* bytes, size_t size, const std::string& name);
  MappedFile file_;
  std::string name_;
  uint32_t version_ = 0;
  std::vector<TensorView> tensors_;
  std::map<std::string, GgufValue> metadata_;
};

// Hyper-parameters from "<arch>.*" metadata (arch llama or qwen3); throws Error naming the key.
ModelConfig gguf_model_config(const GgufFile& f);
// Tokenizer from tokenizer.ggml.* metadata (model "gpt2"; pre "qwen2", "llama-bpe", ...).
TokenizerSpec gguf_tokenizer_spec(const GgufFile& f);

// Writing, for `shardlm convert` and tests.
struct GgufTensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;  // PyTorch order; written reversed as GGUF ne[]
  const void* data;            // dtype_bytes(dtype, numel) bytes in GGUF layout
};
struct GgufWriter {
  std::vector<std::pair<std::string, GgufValue>> metadata;  // written in this order
  std::vector<GgufTensorToWrite> tensors;
  void add_string(const std::string& key, const std::string& v);
  void add_uint32(const std::string& key, uint32_t v);
  void add_int32(const std::string& key, int32_t v);
  void add_float32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string_array(const std::string& key, std::vector<std::string> v);
  void add_int32_array(const std::string& key, const std::vector<int32_t>& v);
  void write(const std::string& path) const;  // version 3, alignment 32
};

}  // namespace shardlm
