// nlohmann::json's messages start with "[json.exception.parse_error.101] "; users need only the rest.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace shardlm {

inline std::string json_error_text(const nlohmann::json::exception& e) {
  std::string s = e.what();
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find("] ");
    if (close != std::string::npos) s.erase(0, close + 2);
  }
  return s;
}

}  // namespace shardlm
