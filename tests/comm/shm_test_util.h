// Helpers shared by the shm backend's tests: the /dev/shm entries a test left behind, and a check
// that every forked rank passed and left none. Header-only: each *_test.cpp that needs them
// includes this file.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "multiprocess.h"

namespace shardlm::test {

// /dev/shm entries made by groups of this test process (names from new_shm_group_name).
inline std::vector<std::string> leftover_segments() {
  std::vector<std::string> found;
  std::string prefix = "shardlm-" + std::to_string(::getpid()) + "-";
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm"))
    if (e.path().filename().string().rfind(prefix, 0) == 0) found.push_back(e.path().string());
  return found;
}

// Every rank exited cleanly, and no segment outlived the groups.
inline void expect_passed(const std::vector<RankOutcome>& outcomes) {
  std::string report;
  EXPECT_TRUE(all_passed(outcomes, &report)) << report;
  EXPECT_EQ(leftover_segments(), std::vector<std::string>{});
}

}  // namespace shardlm::test
