// The machine's own limits, measured by running at them: what `shardlm bench` prints next to
// every figure so a number reads as a fraction of what this machine can do.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/thread_pool.h"

namespace shardlm {

// Sustained read bandwidth in bytes/s of all threads of `pool` summing a buffer much larger
// than the last-level cache, each thread its contiguous share, with the widest loads and
// software prefetch (median of several passes). Throws Error for a buffer under 1 MB.
double measure_read_bandwidth(ThreadPool& pool, size_t buffer_bytes = size_t(1) << 30);
// Peak f32 FMA throughput in FLOP/s (one FMA = 2 FLOP) of all threads, with independent
// register-resident accumulators at the widest vector width the kernels use (simd_level(), so
// SHARDLM_SIMD=avx2 measures the AVX2 peak); the best of several passes.
double measure_fma_peak(ThreadPool& pool);

}  // namespace shardlm

// The probes' inner loops, one per SIMD level (machine_ceiling_<level>.cpp); the functions
// above call the one simd_level() picks.
namespace shardlm::ceiling_kernels {
namespace scalar {
constexpr int kChains = 16;
constexpr int64_t kFlopsPerIteration = 2 * kChains;
float sum_floats(const float* p, size_t n);
float fma_chains(int64_t iterations);
}  // namespace scalar
namespace avx2 {
// Zen/Intel cores retire 2 FMAs per cycle with 4-5 cycles latency: 12 chains cover it.
constexpr int kChains = 12;
constexpr int64_t kFlopsPerIteration = 2 * 8 * kChains;
float sum_floats(const float* p, size_t n);
float fma_chains(int64_t iterations);
}  // namespace avx2
namespace avx512 {
constexpr int kChains = 16;
constexpr int64_t kFlopsPerIteration = 2 * 16 * kChains;
float sum_floats(const float* p, size_t n);
float fma_chains(int64_t iterations);
}  // namespace avx512
}  // namespace shardlm::ceiling_kernels
