// GGUF (llama.cpp's format, version 2 and 3): header, typed metadata, tensor infos, aligned data.
// Every count, length, offset and shape is checked against the file size before use.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"
#include "formats/model_config.h"
#include "formats/tokenizer_spec.h"

namespace shardlm {

// GGUF metadata value type codes, as stored in the file.
enum GgufType : uint32_t {
  kGgufU8 = 0, kGgufI8 = 1, kGgufU16 = 2, kGgufI16 = 3, kGgufU32 = 4, kGgufI32 = 5, kGgufF32 = 6,
  kGgufBool = 7, kGgufString = 8, kGgufArray = 9, kGgufU64 = 10, kGgufI64 = 11, kGgufF64 = 12,
};
const char* gguf_type_name(uint32_t type);  // "u32", "string"... or "unknown"

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
  std::vector<double> numbers;       // array of numbers or bools (exact for |n| < 2^53)

  // Builders that set kind and gguf_type consistently (the writer emits gguf_type).
  static GgufValue uint(uint32_t type, uint64_t v);  // type: kGgufU8/U16/U32/U64
  static GgufValue sint(uint32_t type, int64_t v);   // type: kGgufI8/I16/I32/I64
  static GgufValue real(uint32_t type, double v);    // type: kGgufF32/F64
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  static GgufValue string_array(std::vector<std::string> v);
  static GgufValue number_array(uint32_t element_type, std::vector<double> v);  // any numeric or bool type
  size_t array_size() const { return gguf_type == kGgufString ? strings.size() : numbers.size(); }
};

class GgufFile {
 public:
  explicit GgufFile(const std::string& path);  // throws Error naming the path
  // Parses an in-memory image (used by the fuzzer and tests); `bytes` must outlive the object.
  static GgufFile from_memory(const uint8_t* bytes, size_t size, const std::string& name);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // where the aligned data section starts
  uint64_t file_size() const { return size_; }
  // Tensors with PyTorch-order shapes (GGUF's ne[] reversed), dtype mapped to ours, in file order.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find(const std::string& name) const;
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const GgufValue* get(const std::string& key) const;
  // Typed getters: nullopt when the key is absent; an Error naming the file and key when it holds
  // another type (get_int: any integer type that fits int64; get_float: any number).
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
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  uint64_t size_ = 0;
  std::vector<TensorView> tensors_;
  std::map<std::string, GgufValue> metadata_;
};

// Hyper-parameters from "<arch>.*" metadata (arch llama or qwen3); throws Error naming the key.
ModelConfig gguf_model_config(const GgufFile& f);
// Tokenizer from tokenizer.ggml.* metadata (model "gpt2"; pre "qwen2" or "llama-bpe"). Its eos_ids,
// like the config's eos_token_ids, are the tokens llama.cpp ends generation at: the eos/eot/eom ids
// and the control tokens it recognises by text (<|im_end|>, <|endoftext|>, <|eot_id|>...).
TokenizerSpec gguf_tokenizer_spec(const GgufFile& f);
// The split regex behind a llama.cpp pre-tokenizer name, as the model's tokenizer.json gives it;
// empty for names not supported here. Supported: "qwen2" (Qwen2/3), "llama-bpe" (Llama 3).
std::string gguf_pre_tokenizer_regex(const std::string& pre);

// Writing, for `shardlm convert` and tests.
struct GgufTensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // PyTorch order, 1 to 4 dims; written reversed as GGUF ne[]
  const void* data = nullptr;  // dtype_bytes(dtype, numel) bytes in GGUF layout, or:
  // writes rows [begin, end) (a row = shape.back() elements) into dst, so a converter streams a
  // slice at a time instead of holding whole tensors in memory.
  std::function<void(int64_t begin, int64_t end, uint8_t* dst)> fill_rows;
};
struct GgufWriter {
  std::vector<std::pair<std::string, GgufValue>> metadata;  // written in this order
  std::vector<GgufTensorToWrite> tensors;
  // Called after each tensor is written with (bytes written so far, total data bytes).
  std::function<void(uint64_t done, uint64_t total)> progress;
  void add(const std::string& key, GgufValue v);
  void add_string(const std::string& key, const std::string& v);
  void add_uint32(const std::string& key, uint32_t v);
  void add_int32(const std::string& key, int32_t v);
  void add_float32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string_array(const std::string& key, std::vector<std::string> v);
  void add_int32_array(const std::string& key, const std::vector<int32_t>& v);
  // Version 3, alignment 32. Writes to "<path>.partial" and renames, so a failure never leaves a
  // truncated file under the final name.
  void write(const std::string& path) const;
};

// llama.cpp's Q/K row order for arch "llama": within each head of head_dim rows, Hugging Face's
// halves [0, d/2) and [d/2, d) are interleaved so that rotary pairs become adjacent rows.
// Hugging Face row h*d + j*d/2 + i <-> GGUF row h*d + 2i + j. The two functions are inverses.
int64_t gguf_row_from_hf_row(int64_t hf_row, int64_t head_dim);
int64_t hf_row_from_gguf_row(int64_t gguf_row, int64_t head_dim);

}  // namespace shardlm
