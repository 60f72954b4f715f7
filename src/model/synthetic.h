// Test models with random weights in the real Hugging Face layout, so everything the engine does
// can be checked against transformers without downloading a model.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "core/dtype.h"
#include "formats/model_config.h"

namespace shardlm {

struct SyntheticModelOptions {
  Arch arch = Arch::Llama;
  std::string preset = "tiny";  // tiny, small, 1b
  DType dtype = DType::F32;     // f32, f16 or bf16
  std::string tokenizer_dir;    // tokenizer.json (+ tokenizer_config.json) copied into the model
  uint64_t seed = 0;
  std::string out_dir;
  int64_t shard_bytes = int64_t(2) << 30;  // shards of at most this many bytes
  std::optional<bool> tie_embeddings;      // default: per preset
  std::optional<int64_t> context;          // max_position_embeddings; default: per preset
  int config_style = 4;                    // transformers 4 or 5 config.json layout
  int threads = 0;                         // 0: all cores
};

// The hyper-parameters of a preset for a tokenizer with `vocab_size` ids.
ModelConfig preset_config(Arch arch, const std::string& preset, int64_t vocab_size);

// Writes config.json, model.safetensors (or shards + index), tokenizer files. Returns the config.
ModelConfig write_synthetic_model(const SyntheticModelOptions& options);

// Deterministic N(mean, std) values: element i of stream `stream` is the same on every machine
// and thread count (counter-based), so a model can be regenerated bit for bit from its seed.
void fill_normal(float* out, int64_t n, uint64_t stream, int64_t first_index, float mean, float std);

}  // namespace shardlm
