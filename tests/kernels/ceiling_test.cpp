// The machine-limit probes return physically plausible figures and reject unusable arguments.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "kernels/cpu/machine_ceiling.h"

using namespace shardlm;

TEST(MachineCeiling, ReadBandwidthIsPlausible) {
  ThreadPool pool(2);
  // 256 MB: well past any L3 of this decade's CPUs, small enough for a test.
  const double bw = measure_read_bandwidth(pool, size_t(256) << 20);
  EXPECT_TRUE(std::isfinite(bw));
  EXPECT_GT(bw, 1e9);    // slower than 1 GB/s means the probe is broken
  EXPECT_LT(bw, 2e12);   // faster than 2 TB/s from two threads is impossible
}

TEST(MachineCeiling, ReadBandwidthRejectsTinyBuffers) {
  ThreadPool pool(1);
  EXPECT_THROW(measure_read_bandwidth(pool, 4096), Error);
}

TEST(MachineCeiling, FmaPeakIsPlausible) {
  ThreadPool pool(1);
  const double peak = measure_fma_peak(pool);
  EXPECT_TRUE(std::isfinite(peak));
  // One core: at least one 4-wide multiply-add per ns; at most 64 FLOP/cycle at 6 GHz.
  EXPECT_GT(peak, 8e9);
  EXPECT_LT(peak, 64 * 6e9);
}
