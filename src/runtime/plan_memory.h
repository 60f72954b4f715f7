// What each rank of a plan holds, counted before anything starts: `shardlm plan` prints it, so a
// model that fits on no single machine can be given a split whose ranks each fit.
#pragma once
#include <cstdint>
#include <vector>

#include "formats/model_files.h"
#include "model/weights.h"
#include "parallel/plan.h"

namespace shardlm {

// Positions a sequence may hold: `context`, or 0 for the model's max_position_embeddings up to
// 4,096. Throws Error past the model's limit.
int64_t context_or_default(int64_t context, const ModelConfig& config);

// The slice of the model that `rank` of `plan` loads.
ModelSlice slice_of(const Plan& plan, int rank);

struct RankMemory {
  // The weights the rank keeps, as its report's weight_bytes: its layers' matrices and norms
  // (column slices copied out of the file, the rest mapped) and its rows of the head. A first
  // stage also reads embedding rows, from the mapped file on a CPU (not counted) and from a copy on
  // a GPU (embedding_bytes, unless the rank's head already holds the whole tied table).
  int64_t weight_bytes = 0;
  int64_t embedding_bytes = 0;
  // Its KV cache, as its report's kv_cache_bytes (f32 keys and values, on the host or the GPU).
  int64_t kv_cache_bytes = 0;
};

// What to change when a KV cache does not fit: the budget where one was given (`kv_memory` > 0),
// else the context and batch it was sized by.
const char* kv_cache_remedy(int64_t kv_memory);

// Every rank's memory for `sequences` sequences of `context` positions (or a KV budget of
// `kv_memory` bytes a rank), from the tensor headers of `files`: nothing is read. The KV blocks
// are the fewest any rank asks for, as a cluster uses them.
std::vector<RankMemory> estimate_memory(const ModelFiles& files, const Plan& plan, int64_t context, int sequences,
                                        int64_t kv_memory = 0);

}  // namespace shardlm
