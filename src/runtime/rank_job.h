// A rank's job as JSON: what a rank started elsewhere needs to load its slice. One pair of
// functions serves both ways of starting one, so the two cannot drift apart: a local rank started
// by exec (runtime/local_rank.cpp) and a rank on another machine's worker (runtime/worker.cpp).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "runtime/rank.h"

namespace shardlm {

nlohmann::json rank_job(const RankOptions& options);

// Throws Error naming `from` (who sent the job) and the field that is missing or of the wrong type.
RankOptions rank_options_from_job(const nlohmann::json& job, const std::string& from);

template <class T>
T job_field(const nlohmann::json& job, const char* key, const std::string& from) {
  if (!job.is_object() || !job.contains(key)) fail("malformed job from {}: '{}' is missing", from, key);
  try {
    return job.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    fail("malformed job from {}: '{}' has the wrong type", from, key);
  }
}

}  // namespace shardlm
