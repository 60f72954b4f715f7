// How close two logit vectors are: max_i |a_i - ref_i| / max_i |ref_i|, the measure every
// comparison in docs/correctness.md uses.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

namespace shardlm::test {

inline double max_relative_error(const std::vector<float>& a, const std::vector<float>& ref) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff = std::max(diff, double(std::fabs(a[i] - ref[i])));
    scale = std::max(scale, double(std::fabs(ref[i])));
  }
  return diff / scale;
}

}  // namespace shardlm::test
