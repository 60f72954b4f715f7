// Rotary position embedding frequencies for a config: plain theta, Llama-3 scaling, or the
// per-frequency factors a GGUF file carries.
#pragma once
#include <vector>

#include "formats/model_config.h"

namespace shardlm {

// inv_freq[i] for i < head_dim/2, as transformers computes it (in double, then rounded to f32).
std::vector<float> rope_inverse_frequencies(const ModelConfig& cfg);

}  // namespace shardlm
