// A model on disk, whatever its format, seen the same way by the loader: its hyper-parameters,
// its tokenizer, and its tensors looked up by Hugging Face name. Tensor bytes stay in the
// mapped files; nothing is read until a rank touches the tensors of its own slice.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "formats/model_config.h"
#include "formats/tokenizer_spec.h"

namespace shardlm {

class ModelFiles {
 public:
  virtual ~ModelFiles() = default;
  virtual const ModelConfig& config() const = 0;
  // Tensor by Hugging Face name ("model.layers.3.self_attn.q_proj.weight"); nullptr if absent.
  virtual const TensorView* find(const std::string& hf_name) const = 0;
  virtual std::vector<std::string> tensor_names() const = 0;  // Hugging Face names
  virtual TokenizerSpec tokenizer() const = 0;
  virtual std::string description() const = 0;  // e.g. "Hugging Face folder m/ (2 shards)"
  virtual int64_t file_bytes() const = 0;       // total size of the files on disk
};

// A folder with config.json and model.safetensors (or shards + model.safetensors.index.json).
std::unique_ptr<ModelFiles> open_hf_folder(const std::string& dir);
// A .gguf file; tensors are renamed to their Hugging Face names.
std::unique_ptr<ModelFiles> open_gguf_model(const std::string& path);
// Either of the above, by looking at the path. Throws Error naming what is missing.
std::unique_ptr<ModelFiles> open_model_files(const std::string& path);

// Hugging Face <-> GGUF tensor names ("model.layers.3.mlp.up_proj.weight" <-> "blk.3.ffn_up.weight").
// Empty string when the name has no counterpart.
std::string gguf_name_from_hf(const std::string& hf_name);
std::string hf_name_from_gguf(const std::string& gguf_name);

// Writes `src` as a llama.cpp-compatible GGUF file: 2-D weight matrices in `dtype`
// (f32, f16, bf16, q8_0 or q4_0), norms in f32, hyper-parameters and tokenizer as metadata.
// For arch llama, Q/K rows are permuted as llama.cpp's converter does.
void write_gguf_model(const ModelFiles& src, const std::string& out_path, DType dtype);

}  // namespace shardlm
