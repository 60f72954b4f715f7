#include "model/kv_cache.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/cpu/ops.h"

namespace shardlm {

KvCache::KvCache(int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t block_size, int64_t n_blocks,
                 bool host_pools)
    : block_size_(block_size), n_blocks_(n_blocks), n_kv_heads_(n_kv_heads), head_dim_(head_dim),
      stride_(n_kv_heads * head_dim), host_pools_(host_pools) {
  SHARDLM_CHECK(block_size == ops::kAttentionBlock, "KV cache blocks must hold {} positions", ops::kAttentionBlock);
  SHARDLM_CHECK(block_size > 0 && n_blocks > 0, "KV cache needs at least one block (got {} of {} positions)", n_blocks,
                block_size);
  for (auto* side : {&k_, &v_}) {
    side->resize(size_t(n_layers));
    if (host_pools)
      for (auto& layer : *side) layer.resize(size_t(n_blocks * block_size * stride_));
  }
  // Lowest ids first, so a short run touches only the start of the pool.
  for (int64_t b = n_blocks - 1; b >= 0; --b) free_.push_back(int32_t(b));
}

int64_t KvCache::block_bytes(int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t block_size) {
  return 2 * n_layers * block_size * n_kv_heads * head_dim * int64_t(sizeof(float));
}

void KvCache::reserve(int slot, int64_t length) {
  SHARDLM_CHECK(slot >= 0 && slot < (1 << 20), "KV cache: bad sequence slot {}", slot);
  if (size_t(slot) >= tables_.size()) tables_.resize(size_t(slot) + 1);
  auto& table = tables_[size_t(slot)];
  const int64_t need = blocks_for(length, block_size_) - int64_t(table.size());
  if (need <= 0) return;
  if (need > free_blocks())
    fail("KV cache full: {} more blocks of {} positions needed, {} of {} free (raise --kv-memory)", need, block_size_,
         free_blocks(), n_blocks_);
  for (int64_t i = 0; i < need; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
}

void KvCache::release(int slot) {
  if (slot < 0 || size_t(slot) >= tables_.size()) return;
  auto& table = tables_[size_t(slot)];
  // Returned in reverse so the next sequence reuses the same blocks in the same order.
  for (auto it = table.rbegin(); it != table.rend(); ++it) free_.push_back(*it);
  table.clear();
}

int64_t KvCache::reserved_length(int slot) const {
  if (slot < 0 || size_t(slot) >= tables_.size()) return 0;
  return int64_t(tables_[size_t(slot)].size()) * block_size_;
}

const std::vector<int32_t>& KvCache::blocks(int slot) const {
  static const std::vector<int32_t> none;
  if (slot < 0 || size_t(slot) >= tables_.size()) return none;
  return tables_[size_t(slot)];
}

void KvCache::store(int64_t layer, int slot, int64_t pos, const float* k, const float* v) {
  SHARDLM_CHECK(host_pools_, "internal: storing into a KV cache whose values live on the device");
  const int32_t block = tables_[size_t(slot)][size_t(pos / block_size_)];
  const int64_t offset = block * block_size_ * stride_;
  ops::store_kv(k_[size_t(layer)].data() + offset, v_[size_t(layer)].data() + offset, pos % block_size_, k, v,
                n_kv_heads_, head_dim_);
}

}  // namespace shardlm
