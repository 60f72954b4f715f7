// What rank 0 tells every other rank before each step, on the wire. Plain little-endian structs
// checked on arrival: a message that is not one of these is an error naming the sender, never
// undefined behaviour.
#pragma once
#include <cstdint>

#include "core/error.h"

namespace shardlm {

constexpr uint32_t kStepMagic = 0x534c4d53;  // "SMLS"
constexpr uint32_t kStepProtocolVersion = 1;

enum class StepKind : uint32_t {
  Begin = 1,     // a new request: reset the KV cache to `capacity` positions, set the sampler
  Tokens = 2,    // run n_tokens tokens at positions start.. (prefill or one decode step)
  Report = 3,    // send this rank's report (JSON) to rank 0
  Shutdown = 4,  // leave the rank loop
};

struct StepCommand {
  uint32_t magic = kStepMagic;
  uint32_t version = kStepProtocolVersion;
  uint32_t kind = 0;
  uint32_t want_logits = 0;  // Tokens: the last stage also sends the full logits to rank 0
  int64_t n_tokens = 0;
  int64_t start = 0;
  int64_t capacity = 0;      // Begin
  float temperature = 0, top_p = 1;
  uint64_t seed = 0;
};
static_assert(sizeof(StepCommand) == 56);

// Throws CommError-like Error naming `from` unless the command is well formed for a cache of
// `capacity` positions (the capacity of the current request; Begin carries a new one).
void check_step_command(const StepCommand& c, int from, int64_t capacity, int64_t max_context);

}  // namespace shardlm
