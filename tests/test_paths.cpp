#include "test_paths.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace shardlm::test {

// The build's own paths; a test binary carried to another machine (the GPU machine) is pointed at
// its checkout and scratch space with SHARDLM_SOURCE_DIR / SHARDLM_TEST_SCRATCH_DIR.
std::string env_or(const char* name, const char* fallback) {
  const char* env = std::getenv(name);
  return env && *env ? env : fallback;
}

std::string source_dir() { return env_or("SHARDLM_SOURCE_DIR", SHARDLM_SOURCE_DIR); }
std::string data_dir() { return source_dir() + "/tests/data"; }

std::string assets_dir() {
  const char* env = std::getenv("SHARDLM_ASSETS");
  return env && *env ? env : source_dir() + "/assets";
}

std::string qwen3_tokenizer_dir() {
  std::string dir = assets_dir() + "/qwen3";
  if (!fs::exists(dir + "/tokenizer.json")) {
    ADD_FAILURE() << "missing " << dir << "/tokenizer.json: run scripts/fetch-assets (make test does it)";
  }
  return dir;
}

std::string shardlm_binary() { return env_or("SHARDLM_BINARY", SHARDLM_BINARY); }

std::string scratch_dir(const std::string& name) {
  fs::path dir = fs::path(env_or("SHARDLM_TEST_SCRATCH_DIR", SHARDLM_TEST_SCRATCH_DIR)) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

int run_command(const std::string& cmd, std::string* out, std::string* err) {
  std::string err_file = fs::temp_directory_path() / ("shardlm_test_err_" + std::to_string(::getpid()));
  std::string full = cmd + " 2>" + err_file;
  FILE* p = ::popen(full.c_str(), "r");
  if (!p) return -1;
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
  int status = ::pclose(p);
  if (out) *out = text;
  std::ifstream ef(err_file);
  std::stringstream ss;
  ss << ef.rdbuf();
  if (err) *err = ss.str();
  fs::remove(err_file);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace shardlm::test
