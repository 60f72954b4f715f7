#include "test_models.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "model/synthetic.h"
#include "test_paths.h"

namespace fs = std::filesystem;

namespace shardlm::test {

std::string TestModelSpec::name() const {
  std::string n = arch + "-" + preset + "-" + dtype + "-s" + std::to_string(seed) + "-c" + std::to_string(config_style);
  if (shard_mib != 2048) n += "-shard" + std::to_string(shard_mib);
  if (context > 0) n += "-ctx" + std::to_string(context);
  return n;
}

TestModelSpec parse_make_model_flags(const std::string& flags) {
  TestModelSpec s;
  std::istringstream in(flags);
  std::string key, value;
  while (in >> key >> value) {
    if (key == "--arch") s.arch = value;
    else if (key == "--preset") s.preset = value;
    else if (key == "--dtype") s.dtype = value;
    else if (key == "--seed") s.seed = std::stoull(value);
    else if (key == "--config-style") s.config_style = std::stoi(value);
    else if (key == "--context") s.context = std::stoll(value);
    else fail("unknown make-model flag in golden file: {}", key);
  }
  return s;
}

std::string test_model(const TestModelSpec& spec) {
  fs::path root = env_or("SHARDLM_TEST_MODELS_DIR", SHARDLM_TEST_MODELS_DIR);
  fs::create_directories(root);
  fs::path dir = root / spec.name();
  fs::path done = dir / ".complete";
  int lock = ::open((root / (spec.name() + ".lock")).c_str(), O_CREAT | O_RDWR, 0644);
  if (lock < 0) fail("cannot create lock for test model {}", spec.name());
  ::flock(lock, LOCK_EX);
  if (!fs::exists(done)) {
    fs::remove_all(dir);
    SyntheticModelOptions o;
    o.arch = spec.arch == "qwen3" ? Arch::Qwen3 : Arch::Llama;
    o.preset = spec.preset;
    o.dtype = parse_dtype(spec.dtype);
    o.tokenizer_dir = qwen3_tokenizer_dir();
    o.seed = spec.seed;
    o.out_dir = dir.string();
    o.config_style = spec.config_style;
    o.shard_bytes = spec.shard_mib << 20;
    if (spec.context > 0) o.context = spec.context;
    write_synthetic_model(o);
    std::ofstream(done) << "ok\n";
  }
  ::flock(lock, LOCK_UN);
  ::close(lock);
  return dir.string();
}

}  // namespace shardlm::test
