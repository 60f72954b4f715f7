// libFuzzer target: the messages a rank takes from other processes, as a peer or a stranger could
// send them. The bytes as one step command and the segments after it (what rank 0 sends each step),
// and as a rank's job (JSON: what a worker gets from rank 0, or an exec-started rank from its
// parent). Each is accepted within the run's limits or refused with shardlm::Error; the sanitizers
// catch the rest (an overflowing sum in a check once let a segment through).
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "runtime/rank_job.h"
#include "runtime/step_protocol.h"

using namespace shardlm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const StepLimits limits{4, 4096, 8192};
  if (size >= sizeof(StepCommand)) {
    StepCommand c;
    std::memcpy(&c, data, sizeof c);
    try {
      check_step_command(c, 1, limits);
      if (StepKind(c.kind) == StepKind::Tokens && (c.n_tokens < 1 || c.n_tokens > limits.max_step_tokens))
        __builtin_trap();  // accepted outside the limits
    } catch (const Error&) {
    }
    for (size_t at = sizeof c; at + sizeof(WireSegment) <= size; at += sizeof(WireSegment)) {
      WireSegment s;
      std::memcpy(&s, data + at, sizeof s);
      try {
        check_segment(s, 1, limits);
        if (s.slot < 0 || s.slot >= limits.max_slots || s.start < 0 || s.n_tokens < 1 ||
            s.n_tokens > limits.max_positions - s.start)
          __builtin_trap();
      } catch (const Error&) {
      }
    }
  }
  const nlohmann::json job = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (!job.is_discarded()) {
    try {
      const RankOptions o = rank_options_from_job(job, "fuzz");
      if (o.threads < 0 || o.max_context < 1 || o.kv_memory < 0) __builtin_trap();
    } catch (const Error&) {
    }
  }
  return 0;
}
