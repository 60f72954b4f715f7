#include "formats/model_files.h"

#include <filesystem>

#include "core/error.h"

namespace shardlm {

std::unique_ptr<ModelFiles> open_model_files(const std::string& path) {
  namespace fs = std::filesystem;
  if (!fs::exists(path)) fail("{}: no such file or folder", path);
  if (fs::is_directory(path)) return open_hf_folder(path);
  if (fs::path(path).extension() == ".gguf") return open_gguf_model(path);
  fail("{}: expected a Hugging Face model folder or a .gguf file", path);
}

}  // namespace shardlm
