// The BPE model of a byte-level tokenizer: turns one pre-tokenized piece (raw bytes) into ids by
// merging the pair of lowest merge rank first (leftmost on ties), exactly as Hugging Face's
// Word::merge_all does, with a cache of recent pieces.
#pragma once
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "formats/tokenizer_spec.h"

namespace shardlm {

class BpeModel {
 public:
  // Throws Error naming spec.source when a merge names a token that is not in the vocab.
  explicit BpeModel(const TokenizerSpec& spec);

  // Appends the ids of one piece (raw bytes, before the byte-level mapping).
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;

  // The id of a vocab entry, given in its byte-level form ("Ġthe").
  std::optional<int32_t> vocab_id(std::string_view byte_level_token) const;

 private:
  void merge(std::string_view piece, std::vector<int32_t>& out) const;

  // (left id, right id) -> (rank, merged id), open addressing: this lookup is the inner loop.
  class PairTable {
   public:
    void build(size_t expected);
    void put(int32_t left, int32_t right, uint32_t rank, int32_t merged);
    bool get(int32_t left, int32_t right, uint32_t* rank, int32_t* merged) const;

   private:
    struct Slot {
      uint64_t key = kEmpty;
      uint32_t rank = 0;
      int32_t merged = 0;
    };
    static constexpr uint64_t kEmpty = ~uint64_t(0);
    size_t slot_of(uint64_t key) const;
    std::vector<Slot> slots_;
    size_t mask_ = 0;
    int shift_ = 64;
  };

  std::unordered_map<std::string, int32_t> vocab_;  // byte-level token -> id
  int32_t byte_ids_[256];                            // id of each byte's one-character token, or -1
  PairTable merges_;
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  std::string unk_missing_;  // unk_token named but absent from the vocab (an error once needed)
  std::string source_;

  // Pieces repeat (" the", "\n"): caching them skips the merge loop for most of any text.
  static constexpr size_t kCacheMaxPieceBytes = 256;
  static constexpr size_t kCacheMaxEntries = 1 << 16;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace shardlm
