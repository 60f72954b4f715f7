// GGUF reader and writer: exact round trip of every metadata type and tensor dtype, and a clean
// shardlm::Error (naming the file) for every truncation and corruption, never a crash.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "core/error.h"
#include "formats/gguf.h"
#include "test_paths.h"

using namespace shardlm;

namespace {

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

std::string error_of(const std::vector<uint8_t>& bytes, size_t size) {
  try {
    GgufFile::from_memory(bytes.data(), size, "x.gguf");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
std::string error_of(const std::vector<uint8_t>& bytes) { return error_of(bytes, bytes.size()); }

// Hand-built GGUF images, for corruptions the writer would never produce.
struct Image {
  std::vector<uint8_t> b;
  template <class T>
  Image& pod(T v) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof v);
    return *this;
  }
  Image& str(const std::string& s) {
    pod<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Image& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    return pod<uint32_t>(version).pod<uint64_t>(n_tensors).pod<uint64_t>(n_kv);
  }
  Image& kv_u32(const std::string& key, uint32_t v) { return str(key).pod<uint32_t>(kGgufU32).pod<uint32_t>(v); }
  Image& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name).pod<uint32_t>(uint32_t(ne.size()));
    for (uint64_t n : ne) pod<uint64_t>(n);
    return pod<uint32_t>(type).pod<uint64_t>(offset);
  }
  Image& align(size_t a = 32) {
    while (b.size() % a) b.push_back(0);
    return *this;
  }
  Image& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
};

// A valid image: one kv, one f32 tensor of 8 elements; `edit` may change it before the data.
std::vector<uint8_t> one_tensor(uint32_t type = 0, std::vector<uint64_t> ne = {8}, uint64_t offset = 0,
                                size_t data = 32) {
  Image im;
  im.header(1, 1).kv_u32("general.alignment", 32).tensor("w", ne, type, offset).align().zeros(data);
  return im.b;
}

}  // namespace

TEST(GgufReader, EveryMetadataTypeAndDtypeRoundTripsExactly) {
  std::string dir = test::scratch_dir("gguf_roundtrip");
  GgufWriter w;
  w.add("u8", GgufValue::uint(kGgufU8, 250));
  w.add("i8", GgufValue::sint(kGgufI8, -120));
  w.add("u16", GgufValue::uint(kGgufU16, 65000));
  w.add("i16", GgufValue::sint(kGgufI16, -32000));
  w.add_uint32("u32", 4000000000u);
  w.add_int32("i32", -2000000000);
  w.add_float32("f32", 1e-5f);
  w.add_bool("bool", true);
  w.add_string("string", "h\xc3\xa9llo\n\0x");
  w.add("u64", GgufValue::uint(kGgufU64, 18000000000000000000ull));
  w.add("i64", GgufValue::sint(kGgufI64, -9000000000000000000ll));
  w.add("f64", GgufValue::real(kGgufF64, 0.1));
  w.add_string_array("a.string", {"a", "", "\xe2\x96\x81x y"});
  w.add_int32_array("a.i32", {-1, 0, 2147483647});
  w.add("a.u8", GgufValue::number_array(kGgufU8, {0, 255}));
  w.add("a.i16", GgufValue::number_array(kGgufI16, {-32768, 7}));
  w.add("a.f32", GgufValue::number_array(kGgufF32, {0.5, -2.25}));
  w.add("a.f64", GgufValue::number_array(kGgufF64, {0.1}));
  w.add("a.bool", GgufValue::number_array(kGgufBool, {1, 0, 1}));
  w.add("a.u64", GgufValue::number_array(kGgufU64, {9007199254740992.0}));
  w.add("a.empty", GgufValue::number_array(kGgufI32, {}));

  std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 5.0f, -6.0f};
  std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x7bff, 0x0001};
  std::vector<uint16_t> bf16 = {0x3f80, 0xc000, 0x1234};
  std::vector<float> source(64);
  for (int i = 0; i < 64; ++i) source[size_t(i)] = std::sin(float(i)) * 3.0f;
  std::vector<uint8_t> q8(static_cast<size_t>(dtype_bytes(DType::Q8_0, 64))), q4(size_t(dtype_bytes(DType::Q4_0, 64)));
  from_f32(DType::Q8_0, source.data(), q8.data(), 64);
  from_f32(DType::Q4_0, source.data(), q4.data(), 64);
  std::vector<float> cube(2 * 3 * 4);
  for (size_t i = 0; i < cube.size(); ++i) cube[i] = float(i);
  w.tensors.push_back({"t.f32", DType::F32, {2, 3}, f32.data(), {}});
  w.tensors.push_back({"t.f16", DType::F16, {4}, f16.data(), {}});
  w.tensors.push_back({"t.bf16", DType::BF16, {3}, bf16.data(), {}});
  w.tensors.push_back({"t.q8_0", DType::Q8_0, {2, 32}, q8.data(), {}});
  w.tensors.push_back({"t.q4_0", DType::Q4_0, {1, 64}, q4.data(), {}});
  w.tensors.push_back({"t.cube", DType::F32, {2, 3, 4}, nullptr, [&](int64_t b, int64_t e, uint8_t* dst) {
                         std::memcpy(dst, cube.data() + b * 4, size_t(e - b) * 16);
                       }});
  w.write(dir + "/m.gguf");

  auto bytes = read_all(dir + "/m.gguf");
  // Header: magic, version 3, counts; then the first key is the first one added.
  ASSERT_GE(bytes.size(), 40u);
  EXPECT_EQ(std::memcmp(bytes.data(), "GGUF", 4), 0);
  uint32_t version;
  uint64_t n_tensors, n_kv, key_len;
  std::memcpy(&version, bytes.data() + 4, 4);
  std::memcpy(&n_tensors, bytes.data() + 8, 8);
  std::memcpy(&n_kv, bytes.data() + 16, 8);
  std::memcpy(&key_len, bytes.data() + 24, 8);
  EXPECT_EQ(version, 3u);
  EXPECT_EQ(n_tensors, 6u);
  EXPECT_EQ(n_kv, 21u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(bytes.data() + 32), size_t(key_len)), "u8");

  for (int pass = 0; pass < 2; ++pass) {
    GgufFile f = pass == 0 ? GgufFile(dir + "/m.gguf") : GgufFile::from_memory(bytes.data(), bytes.size(), "mem.gguf");
    EXPECT_EQ(f.version(), 3u);
    EXPECT_EQ(f.alignment(), 32u);
    EXPECT_EQ(f.data_offset() % 32, 0u);
    EXPECT_EQ(f.metadata().size(), 21u);
    EXPECT_EQ(f.get_int("u8"), 250);
    EXPECT_EQ(f.get("u8")->gguf_type, uint32_t(kGgufU8));
    EXPECT_EQ(f.get_int("i8"), -120);
    EXPECT_EQ(f.get("i8")->gguf_type, uint32_t(kGgufI8));
    EXPECT_EQ(f.get_int("u16"), 65000);
    EXPECT_EQ(f.get_int("i16"), -32000);
    EXPECT_EQ(f.get_int("u32"), 4000000000ll);
    EXPECT_EQ(f.get_int("i32"), -2000000000);
    EXPECT_EQ(f.get_float("f32"), double(1e-5f));
    EXPECT_EQ(f.get("f32")->gguf_type, uint32_t(kGgufF32));
    EXPECT_EQ(f.get("bool")->kind, GgufValue::Kind::Bool);
    EXPECT_TRUE(f.get("bool")->b);
    EXPECT_EQ(f.get_string("string"), std::string("h\xc3\xa9llo\n"));  // the literal stops at its \0
    EXPECT_EQ(f.get("u64")->u, 18000000000000000000ull);
    EXPECT_EQ(f.get_int("i64"), -9000000000000000000ll);
    EXPECT_EQ(f.get_float("f64"), 0.1);
    EXPECT_EQ(f.get("f64")->gguf_type, uint32_t(kGgufF64));
    EXPECT_EQ(f.get("a.string")->strings, (std::vector<std::string>{"a", "", "\xe2\x96\x81x y"}));
    EXPECT_EQ(f.get("a.string")->gguf_type, uint32_t(kGgufString));
    EXPECT_EQ(f.get("a.i32")->numbers, (std::vector<double>{-1, 0, 2147483647}));
    EXPECT_EQ(f.get("a.i32")->gguf_type, uint32_t(kGgufI32));
    EXPECT_EQ(f.get("a.u8")->numbers, (std::vector<double>{0, 255}));
    EXPECT_EQ(f.get("a.i16")->numbers, (std::vector<double>{-32768, 7}));
    EXPECT_EQ(f.get("a.f32")->numbers, (std::vector<double>{0.5, -2.25}));
    EXPECT_EQ(f.get("a.f64")->numbers, (std::vector<double>{0.1}));
    EXPECT_EQ(f.get("a.bool")->numbers, (std::vector<double>{1, 0, 1}));
    EXPECT_EQ(f.get("a.bool")->gguf_type, uint32_t(kGgufBool));
    EXPECT_EQ(f.get("a.u64")->numbers, (std::vector<double>{9007199254740992.0}));
    EXPECT_EQ(f.get("a.empty")->kind, GgufValue::Kind::Array);
    EXPECT_TRUE(f.get("a.empty")->numbers.empty());
    EXPECT_EQ(f.get("missing"), nullptr);
    EXPECT_EQ(f.get_int("missing"), std::nullopt);

    ASSERT_EQ(f.tensors().size(), 6u);
    auto check = [&](const char* name, DType dt, std::vector<int64_t> shape, const void* data, size_t n) {
      SCOPED_TRACE(name);
      const TensorView* t = f.find(name);
      ASSERT_TRUE(t);
      EXPECT_EQ(t->dtype, dt);
      EXPECT_EQ(t->shape, shape);
      ASSERT_EQ(t->nbytes, int64_t(n));
      EXPECT_EQ(std::memcmp(t->data, data, n), 0);
      // Offsets are aligned within the file, and the mapping is page-aligned.
      uintptr_t start = pass == 0 ? 0 : reinterpret_cast<uintptr_t>(bytes.data());
      EXPECT_EQ((reinterpret_cast<uintptr_t>(t->data) - start) % 32, 0u);
    };
    check("t.f32", DType::F32, {2, 3}, f32.data(), 24);
    check("t.f16", DType::F16, {4}, f16.data(), 8);
    check("t.bf16", DType::BF16, {3}, bf16.data(), 6);
    check("t.q8_0", DType::Q8_0, {2, 32}, q8.data(), 68);
    check("t.q4_0", DType::Q4_0, {1, 64}, q4.data(), 36);
    check("t.cube", DType::F32, {2, 3, 4}, cube.data(), 96);
    EXPECT_EQ(f.tensors()[0].name, "t.f32");  // file order kept
    EXPECT_EQ(f.tensors()[5].name, "t.cube");
  }
  // Each tensor padded to 32: 32 + 32 + 32 + 96 + 64 + 96 data bytes after the aligned header.
  GgufFile f(dir + "/m.gguf");
  EXPECT_EQ(f.file_size(), f.data_offset() + 352);
  EXPECT_EQ(bytes.size(), f.data_offset() + 352);
}

TEST(GgufReader, TypedGettersNameKeyAndType) {
  auto im = Image().header(0, 3).kv_u32("n", 7);
  im.str("s").pod<uint32_t>(kGgufString).str("text");
  im.str("big").pod<uint32_t>(kGgufU64).pod<uint64_t>(uint64_t(1) << 63);
  GgufFile f = GgufFile::from_memory(im.b.data(), im.b.size(), "t.gguf");
  EXPECT_EQ(f.get_float("n"), 7.0);
  try {
    f.get_int("s");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "t.gguf: metadata 's' must be an integer (it is string)");
  }
  EXPECT_THROW(f.get_string("n"), Error);
  EXPECT_THROW(f.get_int("big"), Error);
  EXPECT_EQ(f.get("big")->u, uint64_t(1) << 63);
}

TEST(GgufReader, EveryTruncationIsAnErrorNamingTheFile) {
  std::string dir = test::scratch_dir("gguf_truncate");
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_string_array("tokenizer.ggml.tokens", {"a", "bc"});
  w.add_int32_array("tokenizer.ggml.token_type", {1, 3});
  w.add_float32("f", 2.5f);
  std::vector<float> a(8, 1.0f);
  std::vector<uint8_t> q(size_t(dtype_bytes(DType::Q8_0, 64)), 0);  // 68 bytes, padded to 96 by the writer
  w.tensors.push_back({"a", DType::F32, {8}, a.data(), {}});
  w.tensors.push_back({"q", DType::Q8_0, {2, 32}, q.data(), {}});
  std::vector<float> b(8, 2.0f);  // last tensor fills its 32 bytes, so the file ends with data
  w.tensors.push_back({"b", DType::F32, {2, 4}, b.data(), {}});
  w.write(dir + "/t.gguf");
  auto bytes = read_all(dir + "/t.gguf");
  ASSERT_EQ(error_of(bytes), "");
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + long(n));  // own buffer: ASan sees overreads
    std::string e = error_of(prefix);
    ASSERT_NE(e, "") << "prefix of " << n << " bytes parsed";
    ASSERT_EQ(e.rfind("x.gguf: ", 0), 0u) << e;
  }
}

TEST(GgufReader, CorruptHeadersAreErrors) {
  auto expect_error = [](const std::vector<uint8_t>& b, const std::string& part) {
    std::string e = error_of(b);
    EXPECT_NE(e.find("x.gguf"), std::string::npos) << e;
    EXPECT_NE(e.find(part), std::string::npos) << "expected '" << part << "' in: " << e;
  };
  expect_error({'G', 'G', 'M', 'L', 0, 0, 0, 0}, "not a GGUF file");
  expect_error(Image().header(0, 0, 1).b, "version 1 is not supported");
  expect_error(Image().header(0, 0, 4).b, "unknown GGUF version 4");
  expect_error(Image().header(uint64_t(1) << 60, 0).b, "tensor count");
  expect_error(Image().header(0, ~uint64_t(0)).b, "metadata count");
  expect_error(Image().header(0, 1).pod<uint64_t>(~uint64_t(0) - 3).zeros(16).b, "metadata key");
  expect_error(Image().header(0, 1).str("k").pod<uint32_t>(kGgufString).pod<uint64_t>(1000).zeros(20).b,
               "metadata string");
  expect_error(Image().header(0, 1).str("k").pod<uint32_t>(kGgufArray).pod<uint32_t>(kGgufU32)
                   .pod<uint64_t>(uint64_t(1) << 62).zeros(64).b,
               "array length");
  expect_error(Image().header(0, 1).str("k").pod<uint32_t>(kGgufArray).pod<uint32_t>(kGgufString)
                   .pod<uint64_t>(3).str("a").pod<uint64_t>(99).zeros(24).b,
               "array string");
  expect_error(Image().header(0, 1).str("k").pod<uint32_t>(kGgufArray).pod<uint32_t>(kGgufArray)
                   .pod<uint64_t>(1).zeros(32).b,
               "'k' is an array of arrays");
  expect_error(Image().header(0, 1).str("k").pod<uint32_t>(13).zeros(16).b, "'k' has unknown type 13");
  expect_error(Image().header(0, 2).kv_u32("k", 1).kv_u32("k", 2).b, "'k' appears twice");
  expect_error(Image().header(0, 1).kv_u32("general.alignment", 48).b, "not a power of two");
  expect_error(Image().header(0, 1).kv_u32("general.alignment", 0).b, "not a power of two");
}

TEST(GgufReader, CorruptTensorInfosAreErrors) {
  auto expect_error = [](const std::vector<uint8_t>& b, const std::string& part) {
    std::string e = error_of(b);
    EXPECT_EQ(e.rfind("x.gguf: ", 0), 0u) << e;
    EXPECT_NE(e.find(part), std::string::npos) << "expected '" << part << "' in: " << e;
  };
  ASSERT_EQ(error_of(one_tensor()), "");
  expect_error(one_tensor(12), "tensor 'w' has type Q4_K (12)");
  expect_error(one_tensor(2, {16}), "tensor 'w' is q4_0 but its rows have 16 elements");
  expect_error(one_tensor(0, {8}, 16), "offset 16 is not a multiple of the alignment 32");
  expect_error(one_tensor(0, {8}, 32), "lies outside the file");
  expect_error(one_tensor(0, {9}), "lies outside the file");
  expect_error(one_tensor(0, {uint64_t(1) << 40, uint64_t(1) << 40}), "shape is larger than the file");
  expect_error(one_tensor(0, {uint64_t(1) << 32, uint64_t(1) << 32, 0}), "shape is larger than the file");
  expect_error(one_tensor(0, {~uint64_t(0)}), "shape is larger than the file");
  expect_error(one_tensor(0, {1, 1, 1, 1, 1}), "has 5 dimensions");
  expect_error(one_tensor(0, {}), "has 0 dimensions");
  // Data section past the end of a file that has tensors.
  expect_error(Image().header(1, 0).tensor("w", {8}, 0, 0).b, "data section would start");
  // Two tensors with one name.
  Image im;
  im.header(2, 0).tensor("w", {8}, 0, 0).tensor("w", {8}, 0, 0).align().zeros(32);
  expect_error(im.b, "'w' appears twice");
  // general.alignment is honoured: with 64, offset 32 is misaligned and the data starts at 64.
  Image a64;
  a64.header(1, 1).kv_u32("general.alignment", 64).tensor("w", {8}, 0, 32).align(64).zeros(64);
  expect_error(a64.b, "not a multiple of the alignment 64");
  Image ok64;
  ok64.header(1, 1).kv_u32("general.alignment", 64).tensor("w", {8}, 0, 0).align(64).zeros(32);
  GgufFile f = GgufFile::from_memory(ok64.b.data(), ok64.b.size(), "a.gguf");
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset(), 128u);
  EXPECT_EQ(f.find("w")->bytes() - ok64.b.data(), 128);
  // A file without tensors may end right after its metadata (no padding).
  auto meta_only = Image().header(0, 1).kv_u32("k", 5).b;
  EXPECT_EQ(error_of(meta_only), "");
}

TEST(GgufReader, MissingFileIsAnErrorNamingIt) {
  try {
    GgufFile f("/nonexistent/m.gguf");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/m.gguf"), std::string::npos);
  }
}
