#include "formats/safetensors.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/json_error.h"

namespace shardlm {

using nlohmann::json;

namespace {

// The header is JSON and could be anything; real ones are well under this.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

DType dtype_from_safetensors(const std::string& s, const std::string& file, const std::string& tensor) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  fail("{}: tensor '{}' has dtype {} (supported: F32, F16, BF16)", file, tensor, s);
}

const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    default: fail("safetensors cannot store dtype {}", dtype_name(t));
  }
}

int64_t checked_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / 8 / d) return -1;
    n *= d;
  }
  return n;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) {
  file_ = MappedFile(path);
  parse(file_.data(), file_.size(), path);
}

SafetensorsFile SafetensorsFile::from_memory(const uint8_t* bytes, size_t size, const std::string& name) {
  SafetensorsFile f;
  f.parse(bytes, size, name);
  return f;
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

void SafetensorsFile::parse(const uint8_t* bytes, size_t size, const std::string& name) {
  if (size < 8) fail("{}: not a safetensors file (only {} bytes)", name, size);
  uint64_t header_len;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > kMaxHeaderBytes || header_len > size - 8)
    fail("{}: corrupt safetensors header (header length {} but file has {} bytes)", name, header_len, size);
  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + header_len);
  } catch (const json::exception& e) {
    fail("{}: corrupt safetensors header: {}", name, json_error_text(e));
  }
  if (!header.is_object()) fail("{}: corrupt safetensors header (not a JSON object)", name);

  const uint8_t* data = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  for (auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) fail("{}: __metadata__ must be an object", name);
      for (auto& [mk, mv] : value.items())
        if (mv.is_string()) metadata_[mk] = mv.get<std::string>();
      continue;
    }
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets"))
      fail("{}: tensor '{}' lacks dtype, shape or data_offsets", name, key);
    const json& jd = value["dtype"];
    const json& js = value["shape"];
    const json& jo = value["data_offsets"];
    if (!jd.is_string() || !js.is_array() || !jo.is_array() || jo.size() != 2)
      fail("{}: tensor '{}' has a malformed entry", name, key);
    TensorView t;
    t.name = key;
    t.dtype = dtype_from_safetensors(jd.get<std::string>(), name, key);
    if (js.size() > 8) fail("{}: tensor '{}' has {} dimensions", name, key, js.size());
    for (auto& d : js) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) fail("{}: tensor '{}' has a bad shape", name, key);
      t.shape.push_back(d.get<int64_t>());
    }
    if (!jo[0].is_number_unsigned() || !jo[1].is_number_unsigned())
      fail("{}: tensor '{}' has bad data_offsets", name, key);
    uint64_t begin = jo[0].get<uint64_t>(), end = jo[1].get<uint64_t>();
    if (begin > end || end > data_size)
      fail("{}: tensor '{}' data [{}, {}) lies outside the file's {} data bytes (truncated file?)", name, key, begin,
           end, data_size);
    int64_t numel = checked_numel(t.shape);
    if (numel < 0 || uint64_t(dtype_bytes(t.dtype, numel)) != end - begin)
      fail("{}: tensor '{}' shape {} {} needs {} bytes but data_offsets give {}", name, key, shape_string(t.shape),
           dtype_name(t.dtype), numel < 0 ? -1 : dtype_bytes(t.dtype, numel), end - begin);
    t.data = data + begin;
    t.nbytes = int64_t(end - begin);
    tensors_.push_back(std::move(t));
  }
}

int64_t TensorToWrite::nbytes() const { return dtype_bytes(dtype, checked_numel(shape)); }

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    uint64_t n = uint64_t(t.nbytes());
    header[t.name] = {{"dtype", safetensors_dtype(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text = header.dump();
  // Pad with spaces so the data starts 8-byte aligned, as the reference implementation does.
  while ((8 + text.size()) % 8 != 0) text += ' ';

  std::string tmp = path + ".partial";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail("{}: cannot create: {}", tmp, std::strerror(errno));
  auto write = [&](const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f) != n) {
      std::fclose(f);
      std::filesystem::remove(tmp);
      fail("{}: write failed (disk full?)", tmp);
    }
  };
  uint64_t len = text.size();
  write(&len, 8);
  write(text.data(), text.size());
  std::vector<uint8_t> buffer;
  for (const auto& t : tensors) {
    size_t n = size_t(t.nbytes());
    if (t.data) {
      write(t.data, n);
    } else {
      buffer.resize(n);
      t.fill(buffer.data());
      write(buffer.data(), n);
    }
  }
  if (std::fclose(f) != 0) fail("{}: close failed", tmp);
  std::filesystem::rename(tmp, path);
}

}  // namespace shardlm
