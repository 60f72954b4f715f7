// Element-wise sums of the ranks' buffers for the native all_reduce. Every rank adds the same
// sources in the same (rank) order, one element at a time, so all ranks get identical bits.
#pragma once
#include <cstddef>
#include <cstdint>

namespace shardlm::comm::shm {

// out[i] = ((src[0][i] + src[1][i]) + src[2][i]) + ...; out may be one of the sources.
void sum_f32(float* out, const float* const* src, int n_src, size_t count);
// The same over bf16 values: widened to f32, summed in f32, rounded to nearest even once.
void sum_bf16(uint16_t* out, const uint16_t* const* src, int n_src, size_t count);

}  // namespace shardlm::comm::shm
