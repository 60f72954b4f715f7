// matmul at the shapes of a 1B Llama-family model (hidden 2048, ffn 8192, vocab 151936), per
// weight dtype: decode (M = 1, bytes/s against the measured read bandwidth) and prefill
// (M = 512, FLOP/s against the measured FMA peak). The ceilings are measured first and printed;
// each case's of_read_bw / of_fma_peak divides by a ceiling measured just before that case.
//
// Decode cycles through enough copies of the matrix that every call reads it from DRAM, as a
// real forward pass does (the whole model is far larger than L3); a 2048x2048 bf16 matrix
// alone would otherwise be served from L3 and overstate the bandwidth.
//
//   matmul_bench [--benchmark_filter=decode/bf16] ; SHARDLM_SIMD=avx2 lowers the kernels,
//   SHARDLM_THREADS sets the pool (default: all cores), SHARDLM_BENCH_WARM=1 keeps decode weights
//   cache-resident where they fit.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "kernels/cpu/machine_ceiling.h"
#include "kernels/cpu/matmul.h"

namespace shardlm {
namespace {

struct Shape {
  const char* name;
  int64_t N, K;
};
constexpr Shape kShapes[] = {
    {"q_o_2048x2048", 2048, 2048},  {"kv_512x2048", 512, 2048},         {"gate_up_8192x2048", 8192, 2048},
    {"down_2048x8192", 2048, 8192}, {"head_151936x2048", 151936, 2048},
};
constexpr DType kDtypes[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0};

constexpr int64_t kPrefillRows = 512;
// Up to this many rows a case is bound by reading the weights: cold copies, bandwidth ceiling.
constexpr int64_t kDecodeLikeRows = 16;
// Decode reads at least this many bytes of distinct weights before reusing one: 8x L3.
constexpr int64_t kColdBytes = int64_t(256) << 20;

ThreadPool& pool() {
  static ThreadPool p([] {
    const char* env = std::getenv("SHARDLM_THREADS");
    return env && *env ? std::atoi(env) : ThreadPool::default_threads();
  }());
  return p;
}

// `copies` matrices of N x K in `dtype`, back to back, filled with a repeated block of real
// quantized random values (the values do not change the speed; generating 300M fresh ones would).
struct WeightCopies {
  std::unique_ptr<uint8_t[]> bytes;
  std::vector<WeightMatrix> mats;
  WeightCopies(DType dtype, int64_t N, int64_t K, int64_t copies) {
    const int64_t row_bytes = dtype_bytes(dtype, K), mat_bytes = row_bytes * N;
    bytes.reset(new uint8_t[size_t(mat_bytes * copies)]);
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    const int64_t pattern_elems = 1 << 16;
    std::vector<float> values(pattern_elems);
    for (float& v : values) v = normal(rng);
    std::vector<uint8_t> pattern(size_t(dtype_bytes(dtype, pattern_elems)));
    from_f32(dtype, values.data(), pattern.data(), pattern_elems);
    const int64_t total = mat_bytes * copies;
    for (int64_t off = 0; off < total; off += int64_t(pattern.size()))
      std::memcpy(bytes.get() + off, pattern.data(), size_t(std::min<int64_t>(int64_t(pattern.size()), total - off)));
    for (int64_t c = 0; c < copies; ++c) mats.push_back(WeightMatrix{dtype, bytes.get() + c * mat_bytes, N, K, row_bytes});
  }
};

std::vector<float> activations(int64_t n) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = normal(rng);
  return v;
}

// On a shared or virtualised machine the ceilings drift (DRAM bandwidth by tens of percent as
// neighbours come and go), so each case is compared with a ceiling measured just before it.
double ceiling_for(int64_t M) {
  return M <= kDecodeLikeRows ? measure_read_bandwidth(pool(), size_t(256) << 20) : measure_fma_peak(pool());
}

void run_case(benchmark::State& state, DType dtype, Shape shape, int64_t M, MatmulPath path) {
  const int64_t mat_bytes = dtype_bytes(dtype, shape.K) * shape.N;
  // SHARDLM_BENCH_WARM=1 reuses one copy: weights from cache where they fit, to see the
  // kernels' compute limit apart from DRAM.
  static const bool warm = std::getenv("SHARDLM_BENCH_WARM") && *std::getenv("SHARDLM_BENCH_WARM") == '1';
  const int64_t copies = M <= kDecodeLikeRows && !warm ? std::max<int64_t>(1, (kColdBytes + mat_bytes - 1) / mat_bytes) : 1;
  WeightCopies w(dtype, shape.N, shape.K, copies);
  const std::vector<float> x = activations(M * shape.K);
  std::vector<float> y(static_cast<size_t>(M * shape.N));
  const double ceiling = ceiling_for(M);
  size_t next = 0;
  for (auto _ : state) {
    matmul_at_level(simd_level(), pool(), x.data(), M, w.mats[next], y.data(), false, path);
    next = next + 1 == w.mats.size() ? 0 : next + 1;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * double(M) * double(shape.N) * double(shape.K);
  using C = benchmark::Counter;
  state.counters["bytes/s"] = C(double(mat_bytes), C::kIsIterationInvariantRate, C::kIs1000);
  state.counters["FLOP/s"] = C(flops, C::kIsIterationInvariantRate, C::kIs1000);
  // The fraction of the ceiling measured just before (a rate of bytes / ceiling is that fraction).
  if (M <= kDecodeLikeRows) {
    state.counters["read_bw"] = C(ceiling, C::kDefaults, C::kIs1000);
    state.counters["of_read_bw"] = C(double(mat_bytes) / ceiling, C::kIsIterationInvariantRate);
  } else {
    state.counters["fma_peak"] = C(ceiling, C::kDefaults, C::kIs1000);
    state.counters["of_fma_peak"] = C(flops / ceiling, C::kIsIterationInvariantRate);
  }
}

void register_all() {
  for (DType dtype : kDtypes)
    for (const Shape& s : kShapes) {
      const std::string d(dtype_name(dtype));
      benchmark::RegisterBenchmark(fmt::format("decode/{}/{}", d, s.name).c_str(), run_case, dtype, s, 1,
                                   MatmulPath::Auto)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(fmt::format("prefill/{}/{}", d, s.name).c_str(), run_case, dtype, s,
                                   kPrefillRows, MatmulPath::Auto)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  // Where decode should hand over to the packed path: a few rows both ways on one shape.
  for (DType dtype : {DType::BF16, DType::Q4_0})
    for (int64_t M : {1, 2, 3, 4, 5, 6, 8, 12, 16})
      for (MatmulPath path : {MatmulPath::Decode, MatmulPath::Packed})
        benchmark::RegisterBenchmark(fmt::format("small_m/{}/M{}/{}", dtype_name(dtype), M,
                                                 path == MatmulPath::Decode ? "decode" : "packed")
                                         .c_str(),
                                     run_case, dtype, kShapes[2], M, path)
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
}

}  // namespace
}  // namespace shardlm

int main(int argc, char** argv) {
  using namespace shardlm;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  // The machine's ceilings once up front (1 GB read, as `shardlm bench` does); each case also
  // measures its own just before it runs.
  const double read_bw = measure_read_bandwidth(pool()), fma_peak = measure_fma_peak(pool());
  fmt::print("threads {}, simd {}, {}\nread bandwidth {:.2f} GB/s, f32 FMA peak {:.1f} GFLOP/s\n", pool().size(),
             simd_level_name(simd_level()), cpu_features().summary(), read_bw / 1e9, fma_peak / 1e9);
  benchmark::AddCustomContext("read_bandwidth_GB_s", fmt::format("{:.2f}", read_bw / 1e9));
  benchmark::AddCustomContext("fma_peak_GFLOP_s", fmt::format("{:.1f}", fma_peak / 1e9));
  benchmark::AddCustomContext("threads", std::to_string(pool().size()));
  benchmark::AddCustomContext("simd", simd_level_name(simd_level()));
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
