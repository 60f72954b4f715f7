// Byte sizes on the command line: "512M", "4G", "1.5G", "65536".
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "core/error.h"

namespace shardlm::cli {

inline int64_t parse_size(const std::string& text, const char* flag) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    fail("{}: '{}' is not a size (e.g. 512M, 4G)", flag, text);
  }
  std::string unit = text.substr(used);
  double scale = 1;
  if (unit == "K" || unit == "k" || unit == "KiB") scale = 1024.0;
  else if (unit == "M" || unit == "MiB") scale = 1024.0 * 1024;
  else if (unit == "G" || unit == "GiB") scale = 1024.0 * 1024 * 1024;
  else if (!unit.empty() && unit != "B") fail("{}: unknown unit '{}' in '{}' (use K, M or G)", flag, unit, text);
  if (!(v > 0) || v * scale > 1e15) fail("{}: '{}' is out of range", flag, text);
  return int64_t(std::llround(v * scale));
}

}  // namespace shardlm::cli
