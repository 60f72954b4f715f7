#include "model/rope.h"

#include <cmath>

#include "core/error.h"

namespace shardlm {

std::vector<float> rope_inverse_frequencies(const ModelConfig& cfg) {
  const int64_t half = cfg.head_dim / 2;
  std::vector<double> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv[size_t(i)] = 1.0 / std::pow(cfg.rope_theta, double(2 * i) / double(cfg.head_dim));

  if (!cfg.rope_freq_factors.empty()) {
    SHARDLM_CHECK(int64_t(cfg.rope_freq_factors.size()) == half, "rope_freqs has {} entries, expected {}",
                  cfg.rope_freq_factors.size(), half);
    for (int64_t i = 0; i < half; ++i) inv[size_t(i)] /= cfg.rope_freq_factors[size_t(i)];
  } else if (cfg.rope_scaling.type == "llama3") {
    // transformers' _compute_llama3_parameters: long wavelengths are slowed by `factor`, short ones
    // kept, and the band between interpolated smoothly.
    const auto& s = cfg.rope_scaling;
    double low_wavelen = double(s.original_max_position_embeddings) / s.low_freq_factor;
    double high_wavelen = double(s.original_max_position_embeddings) / s.high_freq_factor;
    for (auto& f : inv) {
      double wavelen = 2 * M_PI / f;
      if (wavelen > low_wavelen) {
        f = f / s.factor;
      } else if (wavelen >= high_wavelen) {
        double smooth = (double(s.original_max_position_embeddings) / wavelen - s.low_freq_factor) /
                        (s.high_freq_factor - s.low_freq_factor);
        f = (1 - smooth) * f / s.factor + smooth * f;
      }
    }
  } else if (cfg.rope_scaling.type != "default") {
    fail("rope scaling type '{}' is not supported (supported: default, llama3)", cfg.rope_scaling.type);
  }
  return std::vector<float>(inv.begin(), inv.end());
}

}  // namespace shardlm
