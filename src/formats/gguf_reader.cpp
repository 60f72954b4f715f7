// GGUF reader. The file is untrusted: every length, count, shape and offset is checked against the
// bytes actually present before it is used, and counts are capped by the bytes left (each element
// takes at least one byte on disk), so a corrupt or hostile file costs at most a few times its own
// size in memory and never reads outside the buffer.
#include <cstring>
#include <limits>

#include "core/error.h"
#include "formats/gguf.h"

namespace shardlm {

namespace {

constexpr uint32_t kMaxDims = 4;

// Sequential little-endian reads with a bounds check each; errors name the file and the field.
class Cursor {
 public:
  Cursor(const uint8_t* bytes, size_t size, const std::string& name) : p_(bytes), size_(size), name_(name) {}

  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }

  void need(uint64_t n, const char* what) const {
    if (n > left())
      fail("{}: truncated or corrupt GGUF file: {} needs {} bytes at offset {} but only {} remain", name_, what, n,
           pos_, left());
  }
  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    uint64_t n = read<uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(n));
    pos_ += size_t(n);
    return s;
  }
  // A count of elements that each take at least `min_bytes` in the file.
  uint64_t read_count(const char* what, uint64_t min_bytes) {
    uint64_t n = read<uint64_t>(what);
    if (n > left() / min_bytes)
      fail("{}: corrupt GGUF file: {} is {} but only {} bytes remain at offset {}", name_, what, n, left(), pos_);
    return n;
  }

 private:
  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& name_;
};

// Bytes one element of a scalar type takes in the file (0 for string/array/unknown).
uint64_t scalar_bytes(uint32_t type) {
  switch (type) {
    case kGgufU8: case kGgufI8: case kGgufBool: return 1;
    case kGgufU16: case kGgufI16: return 2;
    case kGgufU32: case kGgufI32: case kGgufF32: return 4;
    case kGgufU64: case kGgufI64: case kGgufF64: return 8;
    default: return 0;
  }
}

// Reads one scalar of a numeric or bool type into v (kind and field set).
void read_scalar(Cursor& c, uint32_t type, GgufValue& v, const char* what) {
  v.gguf_type = type;
  switch (type) {
    case kGgufU8: v.kind = GgufValue::Kind::UInt, v.u = c.read<uint8_t>(what); break;
    case kGgufU16: v.kind = GgufValue::Kind::UInt, v.u = c.read<uint16_t>(what); break;
    case kGgufU32: v.kind = GgufValue::Kind::UInt, v.u = c.read<uint32_t>(what); break;
    case kGgufU64: v.kind = GgufValue::Kind::UInt, v.u = c.read<uint64_t>(what); break;
    case kGgufI8: v.kind = GgufValue::Kind::Int, v.i = c.read<int8_t>(what); break;
    case kGgufI16: v.kind = GgufValue::Kind::Int, v.i = c.read<int16_t>(what); break;
    case kGgufI32: v.kind = GgufValue::Kind::Int, v.i = c.read<int32_t>(what); break;
    case kGgufI64: v.kind = GgufValue::Kind::Int, v.i = c.read<int64_t>(what); break;
    case kGgufF32: v.kind = GgufValue::Kind::Float, v.f = c.read<float>(what); break;
    case kGgufF64: v.kind = GgufValue::Kind::Float, v.f = c.read<double>(what); break;
    case kGgufBool: {
      uint8_t b = c.read<uint8_t>(what);
      v.kind = GgufValue::Kind::Bool, v.b = b != 0;
      break;
    }
    default: break;
  }
}

double scalar_as_double(const GgufValue& v) {
  switch (v.kind) {
    case GgufValue::Kind::UInt: return double(v.u);
    case GgufValue::Kind::Int: return double(v.i);
    case GgufValue::Kind::Float: return v.f;
    case GgufValue::Kind::Bool: return v.b ? 1.0 : 0.0;
    default: return 0;
  }
}

GgufValue read_value(Cursor& c, uint32_t type, const std::string& file, const std::string& key) {
  GgufValue v;
  if (type == kGgufString) {
    v.kind = GgufValue::Kind::String, v.gguf_type = kGgufString;
    v.s = c.read_string("metadata string");
    return v;
  }
  if (type == kGgufArray) {
    uint32_t elem = c.read<uint32_t>("array element type");
    v.kind = GgufValue::Kind::Array, v.gguf_type = elem;
    if (elem == kGgufString) {
      uint64_t n = c.read_count("string array length", 8);
      v.strings.reserve(size_t(n));
      for (uint64_t k = 0; k < n; ++k) v.strings.push_back(c.read_string("array string"));
      return v;
    }
    uint64_t width = scalar_bytes(elem);
    if (width == 0) {
      if (elem == kGgufArray) fail("{}: metadata '{}' is an array of arrays (not supported)", file, key);
      fail("{}: metadata '{}' is an array of unknown type {}", file, key, elem);
    }
    uint64_t n = c.read_count("array length", width);
    v.numbers.reserve(size_t(n));
    GgufValue e;
    for (uint64_t k = 0; k < n; ++k) {
      read_scalar(c, elem, e, "array element");
      v.numbers.push_back(scalar_as_double(e));
    }
    return v;
  }
  if (scalar_bytes(type) == 0) fail("{}: metadata '{}' has unknown type {}", file, key, type);
  read_scalar(c, type, v, "metadata value");
  return v;
}

const char* ggml_type_name(uint32_t t) {
  static const char* const names[] = {
      "F32",     "F16",    "Q4_0",   "Q4_1",    "Q4_2",  "Q4_3", "Q5_0",  "Q5_1",  "Q8_0",  "Q8_1",
      "Q2_K",    "Q3_K",   "Q4_K",   "Q5_K",    "Q6_K",  "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
      "IQ4_NL",  "IQ3_S",  "IQ2_S",  "IQ4_XS",  "I8",    "I16",  "I32",   "I64",   "F64",   "IQ1_M",
      "BF16",    "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8",
      "MXFP4"};
  return t < sizeof(names) / sizeof(names[0]) ? names[t] : "unknown";
}

DType dtype_from_ggml(uint32_t t, const std::string& file, const std::string& tensor) {
  switch (t) {
    case 0: return DType::F32;
    case 1: return DType::F16;
    case 2: return DType::Q4_0;
    case 8: return DType::Q8_0;
    case 30: return DType::BF16;
    default:
      fail("{}: tensor '{}' has type {} ({}); supported: F32, F16, BF16, Q8_0, Q4_0", file, tensor, ggml_type_name(t),
           t);
  }
}

}  // namespace

const char* gguf_type_name(uint32_t type) {
  switch (type) {
    case kGgufU8: return "u8";
    case kGgufI8: return "i8";
    case kGgufU16: return "u16";
    case kGgufI16: return "i16";
    case kGgufU32: return "u32";
    case kGgufI32: return "i32";
    case kGgufF32: return "f32";
    case kGgufBool: return "bool";
    case kGgufString: return "string";
    case kGgufArray: return "array";
    case kGgufU64: return "u64";
    case kGgufI64: return "i64";
    case kGgufF64: return "f64";
    default: return "unknown";
  }
}

GgufFile::GgufFile(const std::string& path) {
  file_ = MappedFile(path);
  parse(file_.data(), file_.size(), path);
}

GgufFile GgufFile::from_memory(const uint8_t* bytes, size_t size, const std::string& name) {
  GgufFile f;
  f.parse(bytes, size, name);
  return f;
}

const TensorView* GgufFile::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const GgufValue* GgufFile::get(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

std::optional<int64_t> GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = get(key);
  if (!v) return std::nullopt;
  if (v->kind == GgufValue::Kind::Int) return v->i;
  if (v->kind == GgufValue::Kind::UInt) {
    if (v->u > uint64_t(std::numeric_limits<int64_t>::max()))
      fail("{}: metadata '{}' = {} is too large", name_, key, v->u);
    return int64_t(v->u);
  }
  fail("{}: metadata '{}' must be an integer (it is {}{})", name_, key,
       v->kind == GgufValue::Kind::Array ? "an array of " : "", gguf_type_name(v->gguf_type));
}

std::optional<double> GgufFile::get_float(const std::string& key) const {
  const GgufValue* v = get(key);
  if (!v) return std::nullopt;
  if (v->kind == GgufValue::Kind::Float) return v->f;
  if (v->kind == GgufValue::Kind::Int) return double(v->i);
  if (v->kind == GgufValue::Kind::UInt) return double(v->u);
  fail("{}: metadata '{}' must be a number (it is {}{})", name_, key,
       v->kind == GgufValue::Kind::Array ? "an array of " : "", gguf_type_name(v->gguf_type));
}

std::optional<std::string> GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = get(key);
  if (!v) return std::nullopt;
  if (v->kind != GgufValue::Kind::String)
    fail("{}: metadata '{}' must be a string (it is {}{})", name_, key,
         v->kind == GgufValue::Kind::Array ? "an array of " : "", gguf_type_name(v->gguf_type));
  return v->s;
}

void GgufFile::parse(const uint8_t* bytes, size_t size, const std::string& name) {
  name_ = name;
  size_ = size;
  Cursor c(bytes, size, name_);
  if (size < 4 || std::memcmp(bytes, "GGUF", 4) != 0) fail("{}: not a GGUF file (no GGUF magic)", name_);
  c.read<uint32_t>("magic");
  version_ = c.read<uint32_t>("version");
  if (version_ == 1) fail("{}: GGUF version 1 is not supported (re-convert the model with a current llama.cpp)", name_);
  if (version_ != 2 && version_ != 3) fail("{}: unknown GGUF version {} (supported: 2, 3)", name_, version_);

  // Caps by the least bytes each entry can take: a tensor info is name length (8) + n_dims (4) +
  // one ne (8) + type (4) + offset (8); a key-value is key length (8) + type (4) + one byte.
  uint64_t n_tensors = c.read_count("tensor count", 32);
  uint64_t n_kv = c.read_count("metadata count", 13);

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.read_string("metadata key");
    uint32_t type = c.read<uint32_t>("metadata type");
    GgufValue v = read_value(c, type, name_, key);
    if (!metadata_.emplace(key, std::move(v)).second) fail("{}: metadata key '{}' appears twice", name_, key);
  }

  if (const GgufValue* a = get("general.alignment")) {
    if (a->kind != GgufValue::Kind::UInt && a->kind != GgufValue::Kind::Int)
      fail("{}: general.alignment must be an integer", name_);
    const bool negative = a->kind == GgufValue::Kind::Int && a->i < 0;
    const uint64_t al = a->kind == GgufValue::Kind::UInt ? a->u : negative ? 0 : uint64_t(a->i);
    if (al == 0 || (al & (al - 1)) != 0 || al > (uint64_t(1) << 30))
      fail("{}: general.alignment = {} is not a power of two", name_,
           a->kind == GgufValue::Kind::UInt ? fmt::format("{}", a->u) : fmt::format("{}", a->i));
    alignment_ = al;
  }

  struct Info {
    std::string name;
    uint32_t n_dims;
    uint64_t ne[kMaxDims];
    uint32_t type;
    uint64_t offset;
  };
  std::vector<Info> infos;
  infos.reserve(size_t(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    Info t;
    t.name = c.read_string("tensor name");
    t.n_dims = c.read<uint32_t>("tensor dimension count");
    if (t.n_dims == 0 || t.n_dims > kMaxDims)
      fail("{}: tensor '{}' has {} dimensions (expected 1 to {})", name_, t.name, t.n_dims, kMaxDims);
    for (uint32_t d = 0; d < t.n_dims; ++d) t.ne[d] = c.read<uint64_t>("tensor shape");
    t.type = c.read<uint32_t>("tensor type");
    t.offset = c.read<uint64_t>("tensor offset");
    infos.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment after the tensor infos.
  uint64_t pos = c.pos();
  uint64_t data_start = (pos + alignment_ - 1) / alignment_ * alignment_;
  if (data_start > size) {
    if (!infos.empty())
      fail("{}: truncated GGUF file: data section would start at byte {} but the file has {} bytes", name_,
           data_start, size);
    data_start = size;
  }
  data_offset_ = data_start;
  const uint64_t data_size = size - data_start;

  tensors_.reserve(infos.size());
  for (const Info& info : infos) {
    TensorView t;
    t.name = info.name;
    t.dtype = dtype_from_ggml(info.type, name_, info.name);
    // Every dimension (a zero counted as one) must fit in the data section, checked as the product
    // grows so it cannot overflow; then shape products downstream cannot overflow either.
    const uint64_t cap = (data_size + 1) * uint64_t(dtype_block_elems(t.dtype));
    uint64_t bound = 1, numel = 1;
    for (uint32_t d = 0; d < info.n_dims; ++d) {
      uint64_t ne = info.ne[d];
      if (ne > 1 && bound > cap / ne)
        fail("{}: tensor '{}' shape is larger than the file's {} data bytes", name_, info.name, data_size);
      bound *= ne > 1 ? ne : 1;
      numel *= ne;
    }
    const uint64_t block = uint64_t(dtype_block_elems(t.dtype));
    if (info.ne[0] % block != 0)
      fail("{}: tensor '{}' is {} but its rows have {} elements (not a multiple of {})", name_, info.name,
           dtype_name(t.dtype), info.ne[0], block);
    const uint64_t nbytes = numel / block * uint64_t(dtype_block_bytes(t.dtype));
    if (info.offset % alignment_ != 0)
      fail("{}: tensor '{}' offset {} is not a multiple of the alignment {}", name_, info.name, info.offset,
           alignment_);
    if (info.offset > data_size || nbytes > data_size - info.offset)
      fail("{}: tensor '{}' data [{}, {}) lies outside the file's {} data bytes (truncated file?)", name_, info.name,
           info.offset, info.offset + nbytes, data_size);
    for (uint32_t d = info.n_dims; d-- > 0;) t.shape.push_back(int64_t(info.ne[d]));
    t.data = bytes + data_start + info.offset;
    t.nbytes = int64_t(nbytes);
    tensors_.push_back(std::move(t));
  }
  // Names must be unique for lookups to mean anything.
  std::map<std::string_view, int> seen;
  for (const auto& t : tensors_)
    if (seen[t.name]++) fail("{}: tensor '{}' appears twice", name_, t.name);
}

}  // namespace shardlm
