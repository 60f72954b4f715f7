// peer_sum (peer_sum.h): one block per slice of the data; see the header for the protocol.
//
// Why two staging parities: a rank pushes sum k+1 into a peer's region before knowing that the
// peer has finished reading sum k. It can be at most one sum ahead there: it waits in sum k+1 for
// the peer's flags of k+1, raised only after the peer's whole sum k has finished (kernels on a
// stream run in order), so sums k and k+2 may share a parity, never k and k+1. That needs every
// block of a sum on the same parity whatever the grid (slices move with it): each block keeps its
// own count of sums (blocks of one grid start and end in any order), and block 0 also advances
// the counts of the blocks this grid lacks, so that all counts stay equal.
#include <algorithm>

#include "kernels/cuda/overlap.cuh"
#include "kernels/cuda/peer_sum.h"

namespace shardlm::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int64_t kFloatsPerBlock = 2048;  // a decode row of the 1b preset: one block
constexpr int kUnroll = 4;

__device__ __forceinline__ float* staging(char* region, int parity, int rank, int ranks) {
  return reinterpret_cast<float*>(region) + (int64_t(parity) * ranks + rank) * PeerSumLayout::kPieceFloats;
}
__device__ __forceinline__ uint32_t* flags(char* region, int ranks) {
  return reinterpret_cast<uint32_t*>(region + 2 * size_t(ranks) * PeerSumLayout::kPieceFloats * sizeof(float));
}

__device__ __forceinline__ void store_release(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t load_acquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Every block pushes, flags and waits on its own: it waits only for the same block of its peers,
// never for another of its grid. Every block of the grid fits on the GPU at once (at most one per
// SM), so none waits for a block that cannot start.
__global__ void __launch_bounds__(kThreads, 1) peer_sum_kernel(PeerSum g, float* data, int64_t count, float* add_to) {
  detail::let_next_start();
  detail::wait_for_previous();
  __shared__ uint32_t epoch_shared;
  __shared__ int aborted;
  const int b = blockIdx.x, t = threadIdx.x;
  char* const mine = g.regions[g.rank];
  uint32_t* const my_flags = flags(mine, g.ranks);
  uint32_t* const counts = my_flags + PeerSumLayout::kMaxBlocks * g.ranks;
  if (t == 0) epoch_shared = counts[b] + 1, aborted = 0;
  __syncthreads();
  const uint32_t epoch = epoch_shared;
  const int parity = int(epoch & 1);
  // This block's slice: the same on every rank (same count, same grid), whole float4s but the last.
  const int64_t per = ((count + gridDim.x - 1) / gridDim.x + 3) & ~int64_t(3);
  const int64_t begin = min(count, b * per), end = min(count, begin + per);
  const bool vectors = ((reinterpret_cast<uintptr_t>(data) | reinterpret_cast<uintptr_t>(add_to)) & 15) == 0;
  const int64_t vector_end = vectors ? begin + (end - begin) / 4 * 4 : begin;

  for (int r = 0; r < g.ranks; ++r) {
    if (r == g.rank) continue;
    float* const to = staging(g.regions[r], parity, g.rank, g.ranks);
    for (int64_t i = vector_end + t; i < end; i += kThreads) to[i] = data[i];
    // kUnroll vectors a thread: all loaded before any is stored (the pointers may alias for all
    // the compiler knows), so that several stores to the peer are in flight at once.
    for (int64_t i = begin + 4 * int64_t(t); i < vector_end; i += 4 * kThreads * kUnroll) {
      float4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (i + 4 * kThreads * u < vector_end) v[u] = *reinterpret_cast<const float4*>(data + i + 4 * kThreads * u);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (i + 4 * kThreads * u < vector_end) *reinterpret_cast<float4*>(to + i + 4 * kThreads * u) = v[u];
    }
  }
  __syncthreads();  // every thread's pushes before any flag
  if (t < g.ranks && t != g.rank) {
    store_release(flags(g.regions[t], g.ranks) + b * g.ranks + g.rank, epoch);
    // Thread t waits for rank t's flag here, asking the host's abort word now and then (a read
    // across PCIe: about a microsecond).
    const uint32_t* flag = my_flags + b * g.ranks + t;
    for (uint32_t spins = 1; int32_t(load_acquire(flag) - epoch) < 0; ++spins)
      if (spins % 1024 == 0 && *g.abort) {
        aborted = 1;
        break;
      }
  }
  __syncthreads();
  if (aborted) return;
  // Rank order, each part read past L1 (an SM may hold the same parity's lines from two sums ago).
  for (int64_t i = vector_end + t; i < end; i += kThreads) {
    float sum = 0;
    for (int r = 0; r < g.ranks; ++r) {
      const float part = r == g.rank ? data[i] : __ldcg(staging(mine, parity, r, g.ranks) + i);
      sum = r == 0 ? part : sum + part;
    }
    if (add_to) add_to[i] += sum;
    else data[i] = sum;
  }
  for (int64_t i = begin + 4 * int64_t(t); i < vector_end; i += 4 * kThreads) {
    float4 sum = make_float4(0, 0, 0, 0);
    for (int r = 0; r < g.ranks; ++r) {
      const float4 part = r == g.rank ? *reinterpret_cast<const float4*>(data + i)
                                      : __ldcg(reinterpret_cast<const float4*>(staging(mine, parity, r, g.ranks) + i));
      if (r == 0) sum = part;
      else sum.x += part.x, sum.y += part.y, sum.z += part.z, sum.w += part.w;
    }
    if (add_to) {
      float4 x = *reinterpret_cast<const float4*>(add_to + i);
      x.x += sum.x, x.y += sum.y, x.z += sum.z, x.w += sum.w;
      *reinterpret_cast<float4*>(add_to + i) = x;
    } else {
      *reinterpret_cast<float4*>(data + i) = sum;
    }
  }
  if (t == 0) counts[b] = epoch;
  if (b == 0)
    for (int j = int(gridDim.x) + t; j < PeerSumLayout::kMaxBlocks; j += kThreads) counts[j] = epoch;
}

}  // namespace

size_t PeerSumLayout::bytes(int ranks) {
  return 2 * size_t(ranks) * kPieceFloats * sizeof(float) + (size_t(kMaxBlocks) * ranks + kMaxBlocks) * 4;
}

void peer_sum(const PeerSum& g, float* data, int64_t count, float* add_to, Stream s) {
  if (count <= 0) return;
  if (count > PeerSumLayout::kPieceFloats) detail::fail_with("internal: a peer sum larger than its staging piece");
  const int most = std::clamp(g.max_blocks, 1, PeerSumLayout::kMaxBlocks);
  const int blocks = int(std::min<int64_t>(most, (count + kFloatsPerBlock - 1) / kFloatsPerBlock));
  detail::launch_overlapping("peer_sum", peer_sum_kernel, dim3(blocks), dim3(kThreads), s, g, data, count, add_to);
}

}  // namespace shardlm::cuda
