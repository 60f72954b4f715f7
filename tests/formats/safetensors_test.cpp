#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "formats/safetensors.h"
#include "test_paths.h"

using namespace shardlm;

namespace {
std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}
void write_all(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}
std::vector<uint8_t> image(const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> b(8 + header.size() + data_bytes, 0);
  uint64_t n = header.size();
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  return b;
}
std::string error_of(const std::vector<uint8_t>& bytes) {
  try {
    SafetensorsFile::from_memory(bytes.data(), bytes.size(), "x.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Safetensors, WriteThenReadBackExactBytes) {
  std::string dir = test::scratch_dir("safetensors_roundtrip");
  std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 5.0f, 6.0f};
  std::vector<uint16_t> b = {0x3f80, 0xc000, 0x1234};
  write_safetensors(dir + "/t.safetensors", {{"a", DType::F32, {2, 3}, a.data(), {}},
                                             {"b.weight", DType::BF16, {3}, b.data(), {}},
                                             {"filled", DType::F16, {2}, nullptr, [](uint8_t* d) {
                                                uint16_t v[2] = {0x3c00, 0x4000};
                                                std::memcpy(d, v, 4);
                                              }}});
  // The on-disk layout is the format's: u64 header length, JSON, data 8-byte aligned.
  auto bytes = read_all(dir + "/t.safetensors");
  uint64_t hlen;
  std::memcpy(&hlen, bytes.data(), 8);
  EXPECT_EQ((8 + hlen) % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + hlen + 24 + 6 + 4);

  SafetensorsFile f(dir + "/t.safetensors");
  ASSERT_EQ(f.tensors().size(), 3u);
  const TensorView* ta = f.find("a");
  ASSERT_TRUE(ta);
  EXPECT_EQ(ta->dtype, DType::F32);
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(ta->data, a.data(), 24), 0);
  EXPECT_EQ(std::memcmp(f.find("b.weight")->data, b.data(), 6), 0);
  EXPECT_EQ(f.find("filled")->nbytes, 4);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.find("missing"), nullptr);
}

TEST(Safetensors, TruncatedFileAtEveryLengthIsAnErrorNotACrash) {
  std::string dir = test::scratch_dir("safetensors_trunc");
  std::vector<float> a(16, 1.0f);
  write_safetensors(dir + "/t.safetensors", {{"a", DType::F32, {4, 4}, a.data(), {}}});
  auto bytes = read_all(dir + "/t.safetensors");
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + long(n));
    EXPECT_NE(error_of(cut), "") << "prefix of " << n << " bytes was accepted";
  }
  EXPECT_EQ(error_of(bytes), "");
  // And through the file path: the message names the file.
  write_all(dir + "/cut.safetensors", std::vector<uint8_t>(bytes.begin(), bytes.end() - 8));
  try {
    SafetensorsFile f(dir + "/cut.safetensors");
    FAIL() << "truncated file accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cut.safetensors"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, CorruptHeadersGiveClearErrors) {
  EXPECT_NE(error_of(image("{not json", 0)).find("corrupt safetensors header"), std::string::npos);
  EXPECT_NE(error_of(image("[1,2]", 0)).find("not a JSON object"), std::string::npos);
  EXPECT_NE(error_of(image(R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", 8)).find("I64"), std::string::npos);
  EXPECT_NE(error_of(image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)).find("needs 12 bytes"),
            std::string::npos);
  EXPECT_NE(error_of(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8)).find("outside"), std::string::npos);
  EXPECT_NE(error_of(image(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8)).find("bad shape"),
            std::string::npos);
  EXPECT_NE(error_of(image(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", 8)),
            "");  // overflowing element count
  EXPECT_NE(error_of(image(R"({"a":{"dtype":"F32"}})", 0)).find("lacks"), std::string::npos);
  // Header length larger than the file.
  auto big = image("{}", 0);
  uint64_t n = 1ull << 40;
  std::memcpy(big.data(), &n, 8);
  EXPECT_NE(error_of(big).find("header length"), std::string::npos);
}
