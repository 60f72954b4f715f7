#include "runtime/step_protocol.h"

namespace shardlm {

void check_step_command(const StepCommand& c, int from, int64_t capacity, int64_t max_context) {
  if (c.magic != kStepMagic) fail("malformed step message from rank {} (bad magic {:#x})", from, c.magic);
  if (c.version != kStepProtocolVersion)
    fail("rank {} speaks step protocol version {}, this rank version {}", from, c.version, kStepProtocolVersion);
  switch (StepKind(c.kind)) {
    case StepKind::Begin:
      if (c.capacity <= 0 || c.capacity > max_context)
        fail("malformed step message from rank {}: cache of {} positions (limit {})", from, c.capacity, max_context);
      if (!(c.temperature >= 0) || !(c.top_p > 0 && c.top_p <= 1))
        fail("malformed step message from rank {}: sampler temperature {} top-p {}", from, c.temperature, c.top_p);
      return;
    case StepKind::Tokens:
      if (c.n_tokens <= 0 || c.start < 0 || c.start + c.n_tokens > capacity)
        fail("malformed step message from rank {}: {} tokens at position {} in a cache of {}", from, c.n_tokens, c.start,
             capacity);
      return;
    case StepKind::Report:
    case StepKind::Shutdown:
      return;
  }
  fail("malformed step message from rank {}: unknown kind {}", from, c.kind);
}

}  // namespace shardlm
