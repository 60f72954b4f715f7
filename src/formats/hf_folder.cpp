// A Hugging Face model folder: config.json, model.safetensors or shards listed in
// model.safetensors.index.json, tokenizer.json.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "formats/json_error.h"
#include "formats/model_files.h"
#include "formats/safetensors.h"

namespace shardlm {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

class HfFolder final : public ModelFiles {
 public:
  explicit HfFolder(const std::string& dir) : dir_(dir) {
    if (!fs::is_directory(dir)) fail("{}: not a directory", dir);
    std::string config_path = dir + "/config.json";
    if (!fs::exists(config_path)) fail("{}: no config.json (is this a Hugging Face model folder?)", dir);
    config_ = load_hf_config(config_path);

    std::string index_path = dir + "/model.safetensors.index.json";
    if (fs::exists(index_path)) {
      open_sharded(index_path);
    } else if (fs::exists(dir + "/model.safetensors")) {
      files_.push_back(std::make_unique<SafetensorsFile>(dir + "/model.safetensors"));
      for (const auto& t : files_.back()->tensors()) by_name_[t.name] = &t;
    } else {
      fail("{}: neither model.safetensors nor model.safetensors.index.json found", dir);
    }
    for (const auto& f : files_) bytes_ += int64_t(f->file().size());
  }

  const ModelConfig& config() const override { return config_; }
  const TensorView* find(const std::string& name) const override {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : it->second;
  }
  std::vector<std::string> tensor_names() const override {
    std::vector<std::string> names;
    for (const auto& f : files_)
      for (const auto& t : f->tensors()) names.push_back(t.name);
    return names;
  }
  TokenizerSpec tokenizer() const override { return load_tokenizer_json(dir_); }
  std::string description() const override {
    return files_.size() == 1 ? fmt::format("Hugging Face folder {}", dir_)
                              : fmt::format("Hugging Face folder {} ({} shards)", dir_, files_.size());
  }
  int64_t file_bytes() const override { return bytes_; }

 private:
  void open_sharded(const std::string& index_path) {
    std::ifstream in(index_path);
    std::stringstream ss;
    ss << in.rdbuf();
    json index;
    try {
      index = json::parse(ss.str());
    } catch (const json::exception& e) {
      fail("{}: not valid JSON: {}", index_path, json_error_text(e));
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      fail("{}: no weight_map object", index_path);
    std::set<std::string> shard_names;
    for (auto& [tensor, file] : index["weight_map"].items()) {
      if (!file.is_string()) fail("{}: weight_map entry '{}' is not a file name", index_path, tensor);
      std::string f = file.get<std::string>();
      // Shards must sit in the folder itself: an index must not point elsewhere on the disk.
      if (f.empty() || f.find('/') != std::string::npos || f == "..")
        fail("{}: weight_map entry '{}' names an invalid file '{}'", index_path, tensor, f);
      shard_names.insert(f);
    }
    std::unordered_map<std::string, const SafetensorsFile*> shard_by_name;
    for (const auto& name : shard_names) {
      files_.push_back(std::make_unique<SafetensorsFile>(dir_ + "/" + name));
      shard_by_name[name] = files_.back().get();
    }
    for (auto& [tensor, file] : index["weight_map"].items()) {
      const TensorView* t = shard_by_name[file.get<std::string>()]->find(tensor);
      if (!t) fail("{}: tensor '{}' is listed in the index but missing from {}", index_path, tensor, file.get<std::string>());
      by_name_[tensor] = t;
    }
  }

  std::string dir_;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, const TensorView*> by_name_;
  int64_t bytes_ = 0;
};

}  // namespace

std::unique_ptr<ModelFiles> open_hf_folder(const std::string& dir) { return std::make_unique<HfFolder>(dir); }

}  // namespace shardlm
