// Test models made on demand by the project's own generator and kept under the build tree, so
// every test binary (and every parallel ctest process) shares one copy of each.
#pragma once
#include <string>

namespace shardlm::test {

struct TestModelSpec {
  std::string arch = "llama";  // llama or qwen3
  std::string preset = "tiny";
  std::string dtype = "f32";
  uint64_t seed = 1;
  int config_style = 4;
  int64_t shard_mib = 2048;
  int64_t context = 0;  // max_position_embeddings; 0: the preset's
  std::string name() const;  // folder name, e.g. "llama-tiny-f32-s1-c4"
};

// Parses make-model flags ("--arch qwen3 --preset tiny --dtype bf16 --seed 1 --config-style 5").
TestModelSpec parse_make_model_flags(const std::string& flags);

// Path of the model folder, generating it first if needed (under a lock).
std::string test_model(const TestModelSpec& spec);

}  // namespace shardlm::test
