// Tensor-parallel sums between GPUs of one host that map each other's memory (comm/cuda_ipc/):
// one kernel a sum, no host thread and no library call. Each rank owns a region of device memory
// that every other rank maps; a sum's blocks push their slice of the data into each peer's region,
// raise a flag there, wait for the peers' flags in their own region, and add the parts in rank
// order, so every rank gets the same bits.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/ops.h"

namespace shardlm::cuda {

struct PeerSumLayout {
  static constexpr int kMaxBlocks = 256;  // a sum's grid: at most this, and at most PeerSum::max_blocks
  // A sum of more floats runs as several kernels (the host splits it).
  static constexpr int64_t kPieceFloats = int64_t(1) << 20;
  // A region for `ranks` ranks: staging [2 parities][ranks][kPieceFloats] f32, then the flags
  // [kMaxBlocks][ranks] and this rank's sum counts [kMaxBlocks] (u32). Zeroed before first use.
  static size_t bytes(int ranks);
};

struct PeerSum {
  char* const* regions = nullptr;  // device array [ranks]: each rank's region as this rank maps it
  int rank = 0, ranks = 1;
  // Host memory mapped for the device: nonzero ends every wait at once (the host gave up on a
  // lost peer); a sum that saw it leaves data unsummed.
  const volatile int* abort = nullptr;
  // The grid's limit, the same on every rank: the fewest SMs of the group's GPUs, so that every
  // block of a sum is resident at once on each of them (a block waits for its peers' same block).
  int max_blocks = 1;
};

// data[i] = the sum over ranks, in rank order, of each rank's data[i]; or, with `add_to`,
// add_to[i] += that sum and data is only read. count <= kPieceFloats. Every rank of the group
// calls it with the same count, in the same order.
void peer_sum(const PeerSum& group, float* data, int64_t count, float* add_to, Stream s);

}  // namespace shardlm::cuda
