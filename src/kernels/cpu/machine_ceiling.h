// The machine's own limits, measured by running at them: what `shardlm bench` prints next to
// every figure so a number reads as a fraction of what this machine can do.
#pragma once
#include "core/thread_pool.h"

namespace shardlm {

// Sustained read bandwidth in bytes/s of all threads of `pool` summing a buffer much larger
// than the last-level cache (median of several passes).
double measure_read_bandwidth(ThreadPool& pool, size_t buffer_bytes = size_t(1) << 30);
// Peak f32 FMA throughput in FLOP/s (one FMA = 2 FLOP) of all threads, with independent
// register-resident accumulators at the widest vector width the CPU has.
double measure_fma_peak(ThreadPool& pool);

}  // namespace shardlm
