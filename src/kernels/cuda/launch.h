// Shared by the .cu files: the launch check (defined in C++, so nvcc never sees fmt) and sizes.
#pragma once
#include <cstdint>
#include <functional>

struct CUstream_st;

namespace shardlm::cuda::detail {

// Throws Error naming `kernel` if its launch failed.
void check_launch(const char* kernel);
// Throws Error with this message (nvcc-compiled files call it instead of the fmt-based fail()).
[[noreturn]] void fail_with(const char* message);

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

// Seconds `run` takes on stream `s` (what it queues there), the median of `passes` timed runs
// after one untimed warm-up: how the ceilings of `bench --device cuda` are measured.
double median_seconds(CUstream_st* s, int passes, const std::function<void()>& run);

}  // namespace shardlm::cuda::detail
