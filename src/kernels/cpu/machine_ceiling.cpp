// The probes' drivers: buffers, threads, timing and the statistics over passes. The loops that
// run at the limits are per SIMD level (machine_ceiling_<level>.cpp).
#include "kernels/cpu/machine_ceiling.h"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "core/cpu_features.h"
#include "core/error.h"

namespace shardlm {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Both probes need their loop built for the widest vectors the dispatch level allows.
float sum_floats(const float* p, size_t n) {
  switch (simd_level()) {
    case SimdLevel::Avx512: return ceiling_kernels::avx512::sum_floats(p, n);
    case SimdLevel::Avx2: return ceiling_kernels::avx2::sum_floats(p, n);
    default: return ceiling_kernels::scalar::sum_floats(p, n);
  }
}
float fma_chains(int64_t iterations) {
  switch (simd_level()) {
    case SimdLevel::Avx512: return ceiling_kernels::avx512::fma_chains(iterations);
    case SimdLevel::Avx2: return ceiling_kernels::avx2::fma_chains(iterations);
    default: return ceiling_kernels::scalar::fma_chains(iterations);
  }
}
int64_t flops_per_iteration() {
  switch (simd_level()) {
    case SimdLevel::Avx512: return ceiling_kernels::avx512::kFlopsPerIteration;
    case SimdLevel::Avx2: return ceiling_kernels::avx2::kFlopsPerIteration;
    default: return ceiling_kernels::scalar::kFlopsPerIteration;
  }
}

// Sink that keeps the compiler from discarding the probes' results.
volatile float g_sink;

}  // namespace

double measure_read_bandwidth(ThreadPool& pool, size_t buffer_bytes) {
  SHARDLM_CHECK(buffer_bytes >= (size_t(1) << 20), "measure_read_bandwidth: buffer of {} bytes is too small (at least 1 MB)",
                buffer_bytes);
  const size_t n = buffer_bytes / sizeof(float);
  // Plain pages (no madvise for huge pages): the same kind of memory mmap'd weights sit in.
  void* mem = mmap(nullptr, n * sizeof(float), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SHARDLM_CHECK(mem != MAP_FAILED, "measure_read_bandwidth: cannot map {} bytes", buffer_bytes);
  float* buf = static_cast<float*>(mem);
  const int threads = pool.size();
  auto range = [&](int t) {
    size_t begin = n * size_t(t) / size_t(threads), end = n * size_t(t + 1) / size_t(threads);
    begin &= ~size_t(15), end = t + 1 == threads ? n : end & ~size_t(15);
    return std::pair{begin, end};
  };
  // Each thread writes the part it later reads, so pages are resident before timing.
  pool.run([&](int t, int) {
    auto [b, e] = range(t);
    for (size_t i = b; i < e; ++i) buf[i] = float(i & 7);
  });
  std::vector<double> rates;
  std::vector<float> sums(static_cast<size_t>(threads));
  for (int pass = 0; pass < 7; ++pass) {
    double t0 = now_seconds();
    pool.run([&](int t, int) {
      auto [b, e] = range(t);
      sums[size_t(t)] = sum_floats(buf + b, e - b);
    });
    double s = now_seconds() - t0;
    if (pass > 0) rates.push_back(double(n * sizeof(float)) / s);  // pass 0 warms up
  }
  float total = 0;
  for (float s : sums) total += s;
  g_sink = total;
  munmap(mem, n * sizeof(float));
  return median(rates);
}

double measure_fma_peak(ThreadPool& pool) {
  // Tens of milliseconds per pass at a few hundred GFLOP/s: long enough that the region start is noise.
  const int64_t iterations = int64_t(1) << 24;
  std::vector<double> rates;
  std::vector<float> sums(size_t(pool.size()));
  for (int pass = 0; pass < 6; ++pass) {
    double t0 = now_seconds();
    pool.run([&](int t, int) { sums[size_t(t)] = fma_chains(iterations); });
    double s = now_seconds() - t0;
    if (pass > 0) rates.push_back(double(iterations) * double(flops_per_iteration()) * pool.size() / s);
  }
  g_sink = sums[0];
  // The peak is what the machine can do: the best pass, not the median.
  return *std::max_element(rates.begin(), rates.end());
}

namespace ceiling_kernels::scalar {
float sum_floats(const float* p, size_t n) {
  float s[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += p[i + j];
  for (; i < n; ++i) s[0] += p[i];
  float total = 0;
  for (float v : s) total += v;
  return total;
}
float fma_chains(int64_t iterations) {
  // Baseline x86-64 has no FMA: a multiply and an add per lane, counted as 2 FLOP.
  float acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = float(j);
  const float a = 0.999f, b = 1e-3f;
  for (int64_t i = 0; i < iterations; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = acc[j] * a + b;
  float total = 0;
  for (float v : acc) total += v;
  return total;
}
}  // namespace ceiling_kernels::scalar

}  // namespace shardlm
