// Keys and values of past positions in fixed-size blocks (paged), shared by all sequences of this
// rank: a sequence holds a list of blocks, grown as it gets longer and returned when it ends, so
// memory follows the tokens actually cached, not each request's maximum. The pool is sized from a
// byte budget; a request that cannot get blocks is an error the scheduler sees before it runs.
//
// Layout: per layer, one pool for K and one for V, block b at b * block floats, each block in the
// layout the attention kernel reads (kernels/cpu/ops.h: K transposed so 16 keys form a vector).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace shardlm {

class KvCache {
 public:
  // host_pools = false keeps only the block bookkeeping (tables, free list): the values live
  // elsewhere (device memory), laid out by the same block ids.
  KvCache(int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t block_size, int64_t n_blocks,
          bool host_pools = true);

  // Bytes one block costs on this rank (K and V, every layer it holds).
  static int64_t block_bytes(int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t block_size);
  static constexpr int64_t kDefaultBlockSize = 16;  // = ops::kAttentionBlock

  int64_t block_size() const { return block_size_; }
  int64_t total_blocks() const { return n_blocks_; }
  int64_t free_blocks() const { return int64_t(free_.size()); }
  static int64_t blocks_for(int64_t length, int64_t block_size) { return (length + block_size - 1) / block_size; }
  // The blocks a rank asks for: as many as `kv_memory` bytes hold (blocks of `block_bytes`), or
  // without a budget enough for `sequences` sequences of `context` positions. (A cluster then
  // uses the fewest any rank asked for.)
  static int64_t blocks_wanted(int64_t kv_memory, int64_t block_bytes, int sequences, int64_t context) {
    return kv_memory > 0 ? kv_memory / block_bytes : int64_t(sequences) * blocks_for(context, kDefaultBlockSize);
  }

  // Makes positions [0, length) of sequence `slot` addressable, taking blocks from the pool.
  // Throws Error (naming the shortfall) when the pool cannot supply them; nothing changes then.
  void reserve(int slot, int64_t length);
  // Returns the sequence's blocks to the pool.
  void release(int slot);
  int64_t reserved_length(int slot) const;

  // Stores K and V ([n_kv_heads][head_dim] each) of one position of a sequence (reserved).
  void store(int64_t layer, int slot, int64_t pos, const float* k, const float* v);
  // The blocks of a sequence, in position order (for attention that walks a block at a time).
  const std::vector<int32_t>& blocks(int slot) const;
  // The layer's whole pool: block b starts at b * block_size * position_stride floats.
  const float* k_pool(int64_t layer) const { return k_[size_t(layer)].data(); }
  const float* v_pool(int64_t layer) const { return v_[size_t(layer)].data(); }
  int64_t bytes() const { return host_pools_ ? int64_t(k_.size()) * 2 * n_blocks_ * block_size_ * stride_ * 4 : 0; }

 private:
  int64_t block_size_, n_blocks_, n_kv_heads_, head_dim_, stride_;
  bool host_pools_;
  std::vector<std::vector<float>> k_, v_;  // [layer] -> n_blocks * block_size * stride
  std::vector<int32_t> free_;              // free block ids (taken from the back)
  std::vector<std::vector<int32_t>> tables_;  // [slot] -> blocks
};

}  // namespace shardlm
