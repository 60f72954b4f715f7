// matmul against matmul_reference (double accumulation) for every dtype, every SIMD level this
// CPU has, both paths (decode and packed), awkward shapes, column slices, unaligned weights,
// accumulate, and 1-3 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/error.h"
#include "kernels/cpu/matmul.h"

using namespace shardlm;

namespace {

std::vector<SimdLevel> supported_levels() {
  std::vector<SimdLevel> levels{SimdLevel::Scalar};
  if (cpu_features().avx2) levels.push_back(SimdLevel::Avx2);
  if (cpu_features().avx512) levels.push_back(SimdLevel::Avx512);
  return levels;
}

// A weight matrix stored in `dtype` as a column slice [col0, col0+K) of a wider matrix, starting
// `misalign` bytes past an aligned address, so row_stride exceeds the row and loads are unaligned.
struct TestWeights {
  std::vector<uint8_t> storage;
  WeightMatrix w;
  TestWeights(DType dtype, int64_t N, int64_t K, std::mt19937& rng, int64_t extra_cols = 0, int64_t misalign = 2) {
    const int64_t block = dtype_block_elems(dtype);
    const int64_t col0 = extra_cols > 0 ? block : 0;  // the slice starts inside the wider rows
    const int64_t full_cols = K + extra_cols + col0;
    const int64_t stride = dtype_bytes(dtype, full_cols);
    storage.assign(size_t(stride * N + misalign + 64), 0xcd);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> row(static_cast<size_t>(full_cols));
    uint8_t* base = storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64 + misalign;
    for (int64_t n = 0; n < N; ++n) {
      for (float& v : row) v = normal(rng);
      from_f32(dtype, row.data(), base + n * stride, full_cols);
    }
    w = WeightMatrix{dtype, base + dtype_bytes(dtype, col0), N, K, stride};
  }
};

std::vector<float> random_vector(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = normal(rng);
  return v;
}

// sum_k |x[m,k] * W[n,k]|: the scale of the rounding error an f32 dot product may make.
std::vector<double> abs_dot_sums(const std::vector<float>& x, int64_t M, const WeightMatrix& w) {
  std::vector<double> s(static_cast<size_t>(M * w.rows));
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t n = 0; n < w.rows; ++n) {
    to_f32(w.dtype, w.data + n * w.row_stride, row.data(), w.cols);
    for (int64_t m = 0; m < M; ++m) {
      double a = 0;
      for (int64_t k = 0; k < w.cols; ++k) a += std::fabs(double(x[size_t(m * w.cols + k)]) * row[size_t(k)]);
      s[size_t(m * w.rows + n)] = a;
    }
  }
  return s;
}

// The stated tolerance: 1e-5 of sum |x*w| (f32 accumulation over K terms in any order).
constexpr double kRelTolerance = 1e-5;

void expect_matches_reference(SimdLevel level, int threads, DType dtype, int64_t M, int64_t N, int64_t K,
                              bool accumulate, int64_t extra_cols, int64_t misalign, uint32_t seed,
                              MatmulPath path = MatmulPath::Auto) {
  std::mt19937 rng(seed);
  TestWeights tw(dtype, N, K, rng, extra_cols, misalign);
  const std::vector<float> x = random_vector(M * K, rng);
  std::vector<float> expected(static_cast<size_t>(M * N));
  matmul_reference(x.data(), M, tw.w, expected.data());
  std::vector<float> y = accumulate ? random_vector(M * N, rng) : std::vector<float>(size_t(M * N), NAN);
  const std::vector<float> y0 = y;
  ThreadPool pool(threads);
  matmul_at_level(level, pool, x.data(), M, tw.w, y.data(), accumulate, path);
  const std::vector<double> scale = abs_dot_sums(x, M, tw.w);
  int failures = 0;
  for (int64_t i = 0; i < M * N && failures < 5; ++i) {
    const double want = double(expected[size_t(i)]) + (accumulate ? double(y0[size_t(i)]) : 0.0);
    const double tol = kRelTolerance * scale[size_t(i)] + (accumulate ? 1e-6 * std::fabs(y0[size_t(i)]) : 0.0) + 1e-30;
    if (!(std::fabs(double(y[size_t(i)]) - want) <= tol)) {
      ++failures;
      ADD_FAILURE() << simd_level_name(level) << " " << dtype_name(dtype) << " threads=" << threads << " M=" << M
                    << " N=" << N << " K=" << K << " acc=" << accumulate << " path=" << int(path) << ": y[" << i / N << "][" << i % N
                    << "] = " << y[size_t(i)] << ", want " << want << " (tolerance " << tol << ")";
    }
  }
}

constexpr DType kAllDtypes[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0};

struct Shape {
  int64_t N, K;
};
// Both sides of every tile/panel/vector size (14, 32, 16, 6, 8, 4) and of the k (256) and
// feature (256) blocks; K a multiple of 32 so every dtype can use them.
constexpr Shape kQuantShapes[] = {{1, 32}, {5, 64}, {33, 96}, {67, 160}, {130, 288}, {300, 64}, {47, 544}};
// Float formats take any K: tails of 1..31 columns, and more than one k block.
constexpr Shape kFloatShapes[] = {{17, 1}, {31, 7}, {37, 45}, {16, 257}, {65, 300}, {9, 530}};
constexpr int64_t kRowCounts[] = {1, 2, 3, 4, 5, 7, 8, 9, 14, 15, 64, 129};

class MatmulAllLevels : public ::testing::TestWithParam<DType> {};

TEST_P(MatmulAllLevels, MatchesReferenceOnAllShapes) {
  const DType dtype = GetParam();
  uint32_t seed = 1;
  std::vector<Shape> shapes(std::begin(kQuantShapes), std::end(kQuantShapes));
  if (dtype_block_elems(dtype) == 1) shapes.insert(shapes.end(), std::begin(kFloatShapes), std::end(kFloatShapes));
  for (SimdLevel level : supported_levels())
    for (const Shape& s : shapes)
      for (int64_t M : kRowCounts) {
        ++seed;
        // Cycle the other dimensions so every combination of them is covered across shapes.
        const int threads = 1 + int(seed % 3);
        const bool accumulate = seed % 2 == 0;
        const int64_t extra_cols = seed % 4 == 1 ? 0 : 32 * int64_t(seed % 3 + 1);
        const int64_t misalign = seed % 5 == 0 ? 8 : 2;
        const MatmulPath path = seed % 7 == 3 ? MatmulPath::Decode : seed % 7 == 5 ? MatmulPath::Packed : MatmulPath::Auto;
        expect_matches_reference(level, threads, dtype, M, s.N, s.K, accumulate, extra_cols, misalign, seed, path);
      }
}

TEST_P(MatmulAllLevels, EveryThreadCountOnBothPaths) {
  const DType dtype = GetParam();
  for (SimdLevel level : supported_levels())
    for (int threads : {1, 2, 3})
      for (int64_t M : {1, 2, 31})
        for (bool accumulate : {false, true})
          for (MatmulPath path : {MatmulPath::Decode, MatmulPath::Packed})
            expect_matches_reference(level, threads, dtype, M, 70, 320, accumulate, 64, 2, 77, path);
}

TEST_P(MatmulAllLevels, LlamaShapedDecodeAndPrefill) {
  // A 1B-model projection: 512 x 2048 (kv), decode and a short prefill, on the default level.
  const DType dtype = GetParam();
  expect_matches_reference(simd_level(), 2, dtype, 1, 512, 2048, false, 0, 0, 5);
  expect_matches_reference(simd_level(), 2, dtype, 40, 256, 2048, true, 0, 0, 6);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, MatmulAllLevels, ::testing::ValuesIn(kAllDtypes),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(Matmul, ExactSmallProduct) {
  // Every dtype here holds these integers exactly: each q8_0 block's largest magnitude is 127,
  // so its scale is exactly 1. Sums of them are exact in f32 whatever the order.
  std::vector<float> w_f32(2 * 32, 0.0f);
  w_f32[0] = 1, w_f32[1] = 2, w_f32[2] = -3, w_f32[31] = 127;    // row 0
  w_f32[32] = -127, w_f32[33] = 5, w_f32[63] = 4;                // row 1
  const std::vector<float> x = [] {
    std::vector<float> v(64, 0.0f);
    v[0] = 1, v[1] = 1, v[2] = 1, v[31] = 0.5f;  // token 0
    v[32] = 2, v[33] = -1, v[63] = 0.25f;        // token 1
    return v;
  }();
  // y[m][n] = x[m] . W[n]
  const float want[4] = {1 + 2 - 3 + 63.5f, -127 + 5 + 2, 2 - 2 + 31.75f, -254 - 5 + 1};
  for (DType dtype : {DType::F32, DType::BF16, DType::F16, DType::Q8_0}) {
    std::vector<uint8_t> bytes(size_t(dtype_bytes(dtype, 64)));
    from_f32(dtype, w_f32.data(), bytes.data(), 64);
    WeightMatrix w{dtype, bytes.data(), 2, 32, dtype_bytes(dtype, 32)};
    for (SimdLevel level : supported_levels())
      for (int64_t M : {int64_t(1), int64_t(2)}) {
        ThreadPool pool(2);
        float y[4] = {0, 0, 0, 0};
        // M=1 twice (one token each) on the decode path, M=2 on whichever path the level picks.
        if (M == 1) {
          matmul_at_level(level, pool, x.data(), 1, w, y);
          matmul_at_level(level, pool, x.data() + 32, 1, w, y + 2);
        } else {
          matmul_at_level(level, pool, x.data(), 2, w, y);
        }
        for (int i = 0; i < 4; ++i) EXPECT_EQ(y[i], want[i]) << dtype_name(dtype) << " " << simd_level_name(level) << " " << i;
      }
  }
}

TEST(Matmul, AutoPathSwitchesAtEachLevelsLimit) {
  // Either side of max_decode_rows, and one row forced down the packed path (a 1-row tile).
  for (DType dtype : kAllDtypes)
    for (SimdLevel level : supported_levels())
      for (int64_t M : {1, 2, 3, 4, 5, 7, 8, 9}) {
        expect_matches_reference(level, 2, dtype, M, 3, 64, false, 0, 2, 9);
        expect_matches_reference(level, 1, dtype, M, 19, 96, true, 32, 2, 10, MatmulPath::Packed);
      }
}

TEST(Matmul, DefaultDispatchMatchesItsLevel) {
  std::mt19937 rng(3);
  TestWeights tw(DType::BF16, 40, 96, rng);
  const std::vector<float> x = random_vector(3 * 96, rng);
  std::vector<float> a(3 * 40), b(3 * 40);
  ThreadPool pool(2);
  matmul(pool, x.data(), 3, tw.w, a.data());
  matmul_at_level(simd_level(), pool, x.data(), 3, tw.w, b.data());
  EXPECT_EQ(a, b);
}

TEST(Matmul, EmptyShapes) {
  ThreadPool pool(2);
  std::vector<float> w(4, 1.0f);
  float x[4] = {1, 2, 3, 4};
  float y[4] = {7, 7, 7, 7};
  // K = 0: every output is an empty sum.
  matmul(pool, x, 2, WeightMatrix{DType::F32, reinterpret_cast<const uint8_t*>(w.data()), 2, 0, 0}, y);
  for (float v : y) EXPECT_EQ(v, 0.0f);
  // accumulate with K = 0 leaves y; M = 0 and N = 0 touch nothing.
  y[0] = 5;
  matmul(pool, x, 2, WeightMatrix{DType::F32, reinterpret_cast<const uint8_t*>(w.data()), 2, 0, 0}, y, true);
  EXPECT_EQ(y[0], 5.0f);
  matmul(pool, x, 0, WeightMatrix{DType::F32, reinterpret_cast<const uint8_t*>(w.data()), 2, 2, 8}, y);
  matmul(pool, x, 2, WeightMatrix{DType::F32, reinterpret_cast<const uint8_t*>(w.data()), 0, 2, 8}, y);
  EXPECT_EQ(y[0], 5.0f);
}

TEST(Matmul, RejectsBadMatrices) {
  ThreadPool pool(1);
  std::vector<uint8_t> bytes(4096);
  float x[64] = {}, y[64] = {};
  auto expect_error = [&](WeightMatrix w, const char* needle) {
    try {
      matmul(pool, x, 1, w, y);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(WeightMatrix{DType::Q8_0, bytes.data(), 2, 33, 68}, "not a multiple of its block of 32");
  expect_error(WeightMatrix{DType::Q4_0, bytes.data(), 2, 48, 36}, "not a multiple of its block of 32");
  expect_error(WeightMatrix{DType::BF16, bytes.data(), 2, 32, 62}, "row stride 62 is shorter");
  expect_error(WeightMatrix{DType::F32, nullptr, 2, 8, 32}, "has no data");
  expect_error(WeightMatrix{DType::F32, bytes.data(), -1, 8, 32}, "negative");
  EXPECT_THROW(matmul_reference(x, 1, WeightMatrix{DType::Q8_0, bytes.data(), 1, 31, 34}, y), Error);
}

}  // namespace

TEST(Matmul, SameInputGroupEqualsSeparateProducts) {
  // q, k, v of different sizes and dtypes from one activation, at decode and prefill sizes.
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.0f, 1.0f);
  const int64_t K = 96;
  std::vector<std::vector<uint8_t>> storage;
  std::vector<WeightMatrix> ws;
  for (auto [dtype, N] : {std::pair{DType::BF16, int64_t(72)}, std::pair{DType::Q8_0, int64_t(40)}, std::pair{DType::F32, int64_t(9)}}) {
    std::vector<float> f(size_t(N * K));
    for (auto& v : f) v = d(rng);
    storage.emplace_back(size_t(dtype_bytes(dtype, N * K)));
    from_f32(dtype, f.data(), storage.back().data(), N * K);
    ws.push_back(WeightMatrix{dtype, storage.back().data(), N, K, dtype_bytes(dtype, K)});
  }
  ThreadPool pool(2);
  for (int64_t M : {1, 3, 20}) {
    std::vector<float> x(size_t(M * K));
    for (auto& v : x) v = d(rng);
    std::vector<std::vector<float>> grouped(3), separate(3);
    for (int i = 0; i < 3; ++i) {
      grouped[size_t(i)].assign(size_t(M * ws[size_t(i)].rows), -1.0f);
      separate[size_t(i)].assign(grouped[size_t(i)].size(), -2.0f);
      matmul(pool, x.data(), M, ws[size_t(i)], separate[size_t(i)].data());
    }
    matmul_same_input(pool, x.data(), M,
                      {{&ws[0], grouped[0].data()}, {&ws[1], grouped[1].data()}, {&ws[2], grouped[2].data()}});
    for (int i = 0; i < 3; ++i) EXPECT_EQ(grouped[size_t(i)], separate[size_t(i)]) << "matrix " << i << " M " << M;
  }
}
