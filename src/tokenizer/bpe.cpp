#include "tokenizer/bpe.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizer/byte_level.h"

namespace shardlm {

void BpeModel::PairTable::build(size_t expected) {
  size_t capacity = 16;
  shift_ = 60;
  while (capacity < expected * 2) capacity *= 2, --shift_;
  slots_.assign(capacity, Slot{});
  mask_ = capacity - 1;
}

size_t BpeModel::PairTable::slot_of(uint64_t key) const {
  return size_t((key * 0x9E3779B97F4A7C15ull) >> shift_);  // Fibonacci hashing: top bits
}

void BpeModel::PairTable::put(int32_t left, int32_t right, uint32_t rank, int32_t merged) {
  uint64_t key = (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key == kEmpty || s.key == key) {  // a repeated pair: the later merge wins, as in HF
      s = {key, rank, merged};
      return;
    }
  }
}

bool BpeModel::PairTable::get(int32_t left, int32_t right, uint32_t* rank, int32_t* merged) const {
  uint64_t key = (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.key == key) {
      *rank = s.rank;
      *merged = s.merged;
      return true;
    }
    if (s.key == kEmpty) return false;
  }
}

BpeModel::BpeModel(const TokenizerSpec& spec)
    : ignore_merges_(spec.ignore_merges), fuse_unk_(spec.fuse_unk), source_(spec.source) {
  vocab_.reserve(spec.vocab.size());
  for (size_t id = 0; id < spec.vocab.size(); ++id)
    if (!spec.vocab[id].empty()) vocab_.emplace(spec.vocab[id], int32_t(id));
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(byte_to_unicode(uint8_t(b)));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
  if (!spec.unk_token.empty()) {
    auto it = vocab_.find(spec.unk_token);
    if (it != vocab_.end()) unk_id_ = it->second;
    else unk_missing_ = spec.unk_token;
  }

  merges_.build(spec.merges.size());
  std::string joined;
  for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
    const std::string& left = spec.merges[rank].first;
    const std::string& right = spec.merges[rank].second;
    auto id_of = [&](const std::string& token) {
      auto it = vocab_.find(token);
      if (it == vocab_.end())
        fail("{}: merge {} (\"{}\" \"{}\") names \"{}\", which is not in the vocab", source_, rank, left, right,
             token);
      return it->second;
    };
    int32_t l = id_of(left), r = id_of(right);
    joined.assign(left).append(right);
    merges_.put(l, r, uint32_t(rank), id_of(joined));
  }
}

std::optional<int32_t> BpeModel::vocab_id(std::string_view byte_level_token) const {
  auto it = vocab_.find(std::string(byte_level_token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

namespace {
struct Symbol {
  int32_t id;
  int32_t prev, next;  // neighbours still alive, -1 at the ends
  uint32_t len;        // 0 once merged into its left neighbour
};
struct Candidate {
  uint32_t rank;
  uint32_t pos;
  int32_t merged;
};
// Heap order: lowest rank first, then leftmost position.
bool lower_priority(const Candidate& a, const Candidate& b) {
  return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
}
}  // namespace

void BpeModel::merge(std::string_view piece, std::vector<int32_t>& out) const {
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  symbols.clear();
  heap.clear();
  auto add = [&](int32_t id, uint32_t len) {
    int32_t index = int32_t(symbols.size());
    if (!symbols.empty()) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, len});
  };
  // Characters missing from the vocab become unk_token (fused when fuse_unk) or are dropped.
  int32_t pending_unk_len = 0;
  for (unsigned char b : piece) {
    int32_t id = byte_ids_[b];
    if (id >= 0) {
      if (pending_unk_len) add(unk_id_, uint32_t(pending_unk_len)), pending_unk_len = 0;
      add(id, 1);
      continue;
    }
    if (!unk_missing_.empty())
      fail("{}: unk_token \"{}\" is not in the vocab (needed for byte 0x{:02x})", source_, unk_missing_, b);
    if (unk_id_ < 0) continue;
    if (pending_unk_len && !fuse_unk_) add(unk_id_, uint32_t(pending_unk_len)), pending_unk_len = 0;
    pending_unk_len += 1;
  }
  if (pending_unk_len) add(unk_id_, uint32_t(pending_unk_len));

  uint32_t rank;
  int32_t merged;
  for (size_t i = 0; i + 1 < symbols.size(); ++i)
    if (merges_.get(symbols[i].id, symbols[i + 1].id, &rank, &merged)) heap.push_back({rank, uint32_t(i), merged});
  std::make_heap(heap.begin(), heap.end(), lower_priority);

  // Hugging Face's Word::merge_all, step for step: a queued candidate is stale when its symbol
  // was merged away or the pair there no longer merges into the same token.
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), lower_priority);
    Candidate top = heap.back();
    heap.pop_back();
    Symbol& cur = symbols[top.pos];
    if (cur.len == 0 || cur.next < 0) continue;
    Symbol right = symbols[size_t(cur.next)];
    if (!merges_.get(cur.id, right.id, &rank, &merged) || merged != top.merged) continue;

    symbols[size_t(cur.next)].len = 0;
    cur.id = top.merged;
    cur.len += right.len;
    cur.next = right.next;
    if (right.next >= 0) symbols[size_t(right.next)].prev = int32_t(top.pos);

    if (cur.prev >= 0 && merges_.get(symbols[size_t(cur.prev)].id, cur.id, &rank, &merged)) {
      heap.push_back({rank, uint32_t(cur.prev), merged});
      std::push_heap(heap.begin(), heap.end(), lower_priority);
    }
    if (cur.next >= 0 && merges_.get(cur.id, symbols[size_t(cur.next)].id, &rank, &merged)) {
      heap.push_back({rank, top.pos, merged});
      std::push_heap(heap.begin(), heap.end(), lower_priority);
    }
  }
  for (const Symbol& s : symbols)
    if (s.len != 0) out.push_back(s.id);
}

void BpeModel::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    auto it = vocab_.find(bytes_to_byte_level(piece));
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (piece.size() == 1 && byte_ids_[static_cast<unsigned char>(piece[0])] >= 0) {
    out.push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  const bool cacheable = piece.size() <= kCacheMaxPieceBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(std::string(piece));
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = out.size();
  merge(piece, out);
  if (cacheable) {
    std::vector<int32_t> ids(out.begin() + std::ptrdiff_t(first), out.end());
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kCacheMaxEntries) cache_.clear();  // start over on a new kind of text
    cache_.emplace(std::string(piece), std::move(ids));
  }
}

}  // namespace shardlm
