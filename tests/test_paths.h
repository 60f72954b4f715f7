// Where tests find their inputs: committed golden data, fetched assets, the shardlm binary,
// and a scratch folder of their own.
#pragma once
#include <string>

namespace shardlm::test {

// Each of these build-time paths can be overridden by the environment variable of the same name
// (SHARDLM_SOURCE_DIR, SHARDLM_BINARY, SHARDLM_TEST_SCRATCH_DIR, SHARDLM_TEST_MODELS_DIR), for a
// test binary carried to another machine.
std::string env_or(const char* name, const char* fallback);
std::string source_dir();
std::string data_dir();      // tests/data
std::string assets_dir();    // assets/ (or $SHARDLM_ASSETS); fails the test with a clear message if missing
std::string qwen3_tokenizer_dir();  // assets/qwen3, checked to hold tokenizer.json
std::string shardlm_binary();
std::string scratch_dir(const std::string& name);  // fresh, empty folder under the build tree
// Runs a shell command, returns its exit status and fills stdout/stderr.
int run_command(const std::string& cmd, std::string* out, std::string* err = nullptr);

}  // namespace shardlm::test
