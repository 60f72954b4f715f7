// What one token costs a model: the weight bytes a decode step reads and the multiply-adds, in
// the layers and in the head. Bench divides its figures by these to set them beside the ceilings.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "formats/model_files.h"

namespace shardlm::cli {

struct TokenCost {
  int64_t layer_bytes = 0, head_bytes = 0, layer_params = 0, head_params = 0;
  std::string dtype;  // of the first layer's q
  // The bytes of each matrix product of a decode step as a GPU reads them (q|k|v, o, gate|up and
  // down stacked as it stacks them, then lm_head).
  std::vector<size_t> products;
  int64_t bytes_per_token() const { return layer_bytes + head_bytes; }
};
TokenCost token_cost(const ModelFiles& files);

}  // namespace shardlm::cli
