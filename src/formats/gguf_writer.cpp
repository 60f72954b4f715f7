// GGUF writer (version 3, alignment 32): header, metadata in the given order, tensor infos, then
// each tensor's data padded to the alignment. Tensors given as fill_rows are streamed in slices.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "formats/gguf.h"

namespace shardlm {

namespace {

constexpr uint64_t kAlignment = 32;
// Slice size for streamed tensors: large enough for fast writes, small enough to bound memory.
constexpr int64_t kSliceBytes = 8 << 20;

uint64_t align_up(uint64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

uint32_t ggml_type(DType t) {
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q8_0: return 8;
    case DType::BF16: return 30;
  }
  return 0;
}

class Output {
 public:
  explicit Output(const std::string& path) : path_(path) {
    f_ = std::fopen(path.c_str(), "wb");
    if (!f_) fail("{}: cannot create: {}", path, std::strerror(errno));
  }
  ~Output() {
    if (f_) {
      std::fclose(f_);
      std::error_code ec;
      std::filesystem::remove(path_, ec);  // only reached when writing failed
    }
  }
  void bytes(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n) fail("{}: write failed (disk full?): {}", path_, std::strerror(errno));
    written_ += n;
  }
  template <class T>
  void pod(T v) {
    bytes(&v, sizeof v);
  }
  void string(const std::string& s) {
    pod<uint64_t>(s.size());
    bytes(s.data(), s.size());
  }
  void pad() {
    static const uint8_t zeros[kAlignment] = {};
    bytes(zeros, size_t(align_up(written_) - written_));
  }
  void close() {
    FILE* f = f_;
    f_ = nullptr;
    if (std::fclose(f) != 0) {
      std::error_code ec;
      std::filesystem::remove(path_, ec);
      fail("{}: close failed (disk full?)", path_);
    }
  }

 private:
  std::string path_;
  FILE* f_ = nullptr;
  uint64_t written_ = 0;
};

void write_scalar(Output& out, uint32_t type, const GgufValue& v, double number) {
  // Arrays pass each element as `number`; scalars use the value's own field.
  const bool from_number = v.kind == GgufValue::Kind::Array;
  auto as_u = [&] { return from_number ? uint64_t(number) : v.u; };
  auto as_i = [&] { return from_number ? int64_t(number) : v.i; };
  auto as_f = [&] { return from_number ? number : v.f; };
  switch (type) {
    case kGgufU8: out.pod<uint8_t>(uint8_t(as_u())); break;
    case kGgufU16: out.pod<uint16_t>(uint16_t(as_u())); break;
    case kGgufU32: out.pod<uint32_t>(uint32_t(as_u())); break;
    case kGgufU64: out.pod<uint64_t>(as_u()); break;
    case kGgufI8: out.pod<int8_t>(int8_t(as_i())); break;
    case kGgufI16: out.pod<int16_t>(int16_t(as_i())); break;
    case kGgufI32: out.pod<int32_t>(int32_t(as_i())); break;
    case kGgufI64: out.pod<int64_t>(as_i()); break;
    case kGgufF32: out.pod<float>(float(as_f())); break;
    case kGgufF64: out.pod<double>(as_f()); break;
    case kGgufBool: out.pod<uint8_t>(from_number ? number != 0 : v.b); break;
    default: fail("GGUF writer: cannot write a value of type {}", type);
  }
}

void write_value(Output& out, const std::string& key, const GgufValue& v) {
  out.string(key);
  if (v.kind == GgufValue::Kind::Array) {
    out.pod<uint32_t>(kGgufArray);
    out.pod<uint32_t>(v.gguf_type);
    if (v.gguf_type == kGgufString) {
      out.pod<uint64_t>(v.strings.size());
      for (const auto& s : v.strings) out.string(s);
    } else {
      out.pod<uint64_t>(v.numbers.size());
      for (double n : v.numbers) write_scalar(out, v.gguf_type, v, n);
    }
    return;
  }
  out.pod<uint32_t>(v.gguf_type);
  if (v.kind == GgufValue::Kind::String) out.string(v.s);
  else write_scalar(out, v.gguf_type, v, 0);
}

}  // namespace

GgufValue GgufValue::uint(uint32_t type, uint64_t v) {
  GgufValue x;
  x.kind = Kind::UInt, x.gguf_type = type, x.u = v;
  return x;
}
GgufValue GgufValue::sint(uint32_t type, int64_t v) {
  GgufValue x;
  x.kind = Kind::Int, x.gguf_type = type, x.i = v;
  return x;
}
GgufValue GgufValue::real(uint32_t type, double v) {
  GgufValue x;
  x.kind = Kind::Float, x.gguf_type = type, x.f = v;
  return x;
}
GgufValue GgufValue::boolean(bool v) {
  GgufValue x;
  x.kind = Kind::Bool, x.gguf_type = kGgufBool, x.b = v;
  return x;
}
GgufValue GgufValue::string(std::string v) {
  GgufValue x;
  x.kind = Kind::String, x.gguf_type = kGgufString, x.s = std::move(v);
  return x;
}
GgufValue GgufValue::string_array(std::vector<std::string> v) {
  GgufValue x;
  x.kind = Kind::Array, x.gguf_type = kGgufString, x.strings = std::move(v);
  return x;
}
GgufValue GgufValue::number_array(uint32_t element_type, std::vector<double> v) {
  GgufValue x;
  x.kind = Kind::Array, x.gguf_type = element_type, x.numbers = std::move(v);
  return x;
}

void GgufWriter::add(const std::string& key, GgufValue v) { metadata.emplace_back(key, std::move(v)); }
void GgufWriter::add_string(const std::string& key, const std::string& v) { add(key, GgufValue::string(v)); }
void GgufWriter::add_uint32(const std::string& key, uint32_t v) { add(key, GgufValue::uint(kGgufU32, v)); }
void GgufWriter::add_int32(const std::string& key, int32_t v) { add(key, GgufValue::sint(kGgufI32, v)); }
void GgufWriter::add_float32(const std::string& key, float v) { add(key, GgufValue::real(kGgufF32, v)); }
void GgufWriter::add_bool(const std::string& key, bool v) { add(key, GgufValue::boolean(v)); }
void GgufWriter::add_string_array(const std::string& key, std::vector<std::string> v) {
  add(key, GgufValue::string_array(std::move(v)));
}
void GgufWriter::add_int32_array(const std::string& key, const std::vector<int32_t>& v) {
  add(key, GgufValue::number_array(kGgufI32, std::vector<double>(v.begin(), v.end())));
}

void GgufWriter::write(const std::string& path) const {
  // Sizes and offsets first, so the header can be written before any tensor is produced.
  std::vector<uint64_t> sizes, offsets;
  uint64_t total = 0;
  for (const auto& t : tensors) {
    if (t.shape.empty() || t.shape.size() > 4)
      fail("GGUF writer: tensor '{}' has {} dimensions (expected 1 to 4)", t.name, t.shape.size());
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) fail("GGUF writer: tensor '{}' has a negative dimension", t.name);
      numel *= d;
    }
    if (t.shape.back() % dtype_block_elems(t.dtype) != 0)
      fail("GGUF writer: tensor '{}' is {} but its rows have {} elements (not a multiple of {})", t.name,
           dtype_name(t.dtype), t.shape.back(), dtype_block_elems(t.dtype));
    if (!t.data && !t.fill_rows) fail("GGUF writer: tensor '{}' has neither data nor fill_rows", t.name);
    offsets.push_back(total);
    sizes.push_back(uint64_t(dtype_bytes(t.dtype, numel)));
    total = align_up(total + sizes.back());
  }

  const std::string tmp = path + ".partial";
  Output out(tmp);
  out.bytes("GGUF", 4);
  out.pod<uint32_t>(3);
  out.pod<uint64_t>(tensors.size());
  out.pod<uint64_t>(metadata.size());
  for (const auto& [key, value] : metadata) write_value(out, key, value);
  for (size_t k = 0; k < tensors.size(); ++k) {
    const auto& t = tensors[k];
    out.string(t.name);
    out.pod<uint32_t>(uint32_t(t.shape.size()));
    for (size_t d = t.shape.size(); d-- > 0;) out.pod<uint64_t>(uint64_t(t.shape[d]));
    out.pod<uint32_t>(ggml_type(t.dtype));
    out.pod<uint64_t>(offsets[k]);
  }
  out.pad();

  std::vector<uint8_t> slice;
  uint64_t done = 0;
  for (size_t k = 0; k < tensors.size(); ++k) {
    const auto& t = tensors[k];
    if (t.data) {
      out.bytes(t.data, size_t(sizes[k]));
    } else {
      const int64_t cols = t.shape.back();
      const int64_t rows = cols == 0 ? 0 : int64_t(sizes[k]) / std::max<int64_t>(1, dtype_bytes(t.dtype, cols));
      const int64_t row_bytes = dtype_bytes(t.dtype, cols);
      const int64_t step = std::max<int64_t>(1, kSliceBytes / std::max<int64_t>(1, row_bytes));
      for (int64_t r = 0; r < rows; r += step) {
        int64_t end = std::min(rows, r + step);
        slice.resize(size_t((end - r) * row_bytes));
        t.fill_rows(r, end, slice.data());
        out.bytes(slice.data(), slice.size());
      }
    }
    out.pad();
    done += sizes[k];
    if (progress) progress(done, total);
  }
  out.close();
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    fail("{}: cannot rename {} to it: {}", path, tmp, ec.message());
  }
}

}  // namespace shardlm
