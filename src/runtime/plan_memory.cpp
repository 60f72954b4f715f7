#include "runtime/plan_memory.h"

#include <algorithm>

#include "core/error.h"
#include "model/kv_cache.h"

namespace shardlm {

int64_t context_or_default(int64_t context, const ModelConfig& config) {
  const int64_t max_pos = config.max_position_embeddings;
  const int64_t n = context > 0 ? context : std::min<int64_t>(max_pos, 4096);
  SHARDLM_CHECK(n <= max_pos, "context {} exceeds the model's max_position_embeddings ({})", n, max_pos);
  return n;
}

ModelSlice slice_of(const Plan& p, int rank) {
  const StageRange& st = p.stages[size_t(p.stage_of(rank))];
  const TpSlice& s = p.slices[size_t(p.tp_rank_of(rank))];
  ModelSlice m;
  m.layer_begin = st.layer_begin, m.layer_end = st.layer_end;
  m.embedding = p.stage_of(rank) == 0;
  const VocabRange v = p.vocab_of(rank);
  m.head = p.holds_head(rank);
  m.head_begin = s.head_begin, m.head_end = s.head_end;
  m.kv_head_begin = s.kv_head_begin, m.kv_head_end = s.kv_head_end;
  m.ffn_begin = s.ffn_begin, m.ffn_end = s.ffn_end;
  m.vocab_begin = m.head ? v.begin : 0, m.vocab_end = m.head ? v.end : 1;
  return m;
}

const char* kv_cache_remedy(int64_t kv_memory) {
  return kv_memory > 0 ? "lower --kv-memory" : "lower --context or --max-batch, or give a smaller --kv-memory";
}

std::vector<RankMemory> estimate_memory(const ModelFiles& files, const Plan& plan, int64_t context, int sequences,
                                        int64_t kv_memory) {
  const ModelConfig& c = files.config();
  std::vector<RankMemory> ranks(size_t(plan.world_size()));
  std::vector<int64_t> block_bytes(ranks.size());
  int64_t blocks = -1;
  for (int r = 0; r < plan.world_size(); ++r) {
    const ModelWeights w = load_weights(files, slice_of(plan, r), WeightAccess::CountOnly);
    RankMemory& m = ranks[size_t(r)];
    m.weight_bytes = w.bytes;
    if (embedding_copied(w)) m.embedding_bytes = w.embedding.nbytes;
    block_bytes[size_t(r)] = KvCache::block_bytes(w.slice.layer_end - w.slice.layer_begin,
                                                  w.slice.kv_head_end - w.slice.kv_head_begin, c.head_dim,
                                                  KvCache::kDefaultBlockSize);
    const int64_t wanted = KvCache::blocks_wanted(kv_memory, block_bytes[size_t(r)], sequences, context);
    blocks = blocks < 0 ? wanted : std::min(blocks, wanted);
  }
  SHARDLM_CHECK(blocks >= 1, "--kv-memory {} bytes holds no KV block on some rank (a block costs up to {} bytes)", kv_memory,
                *std::max_element(block_bytes.begin(), block_bytes.end()));
  for (size_t r = 0; r < ranks.size(); ++r) ranks[r].kv_cache_bytes = blocks * block_bytes[r];
  return ranks;
}

}  // namespace shardlm
