// Keys and values of past positions, per layer, in f32: [position][kv_head][head_dim].
#pragma once
#include <cstdint>
#include <vector>

namespace shardlm {

class KvCache {
 public:
  KvCache(int64_t n_layers, int64_t capacity, int64_t n_kv_heads, int64_t head_dim)
      : capacity_(capacity), stride_(n_kv_heads * head_dim),
        k_(size_t(n_layers)), v_(size_t(n_layers)) {
    for (auto* side : {&k_, &v_})
      for (auto& layer : *side) layer.resize(size_t(capacity * stride_));
  }
  int64_t capacity() const { return capacity_; }
  int64_t stride() const { return stride_; }  // floats between positions
  float* k(int64_t layer) { return k_[size_t(layer)].data(); }
  float* v(int64_t layer) { return v_[size_t(layer)].data(); }
  int64_t bytes() const { return int64_t(k_.size()) * 2 * capacity_ * stride_ * 4; }

 private:
  int64_t capacity_, stride_;
  std::vector<std::vector<float>> k_, v_;
};

}  // namespace shardlm
