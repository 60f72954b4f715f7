#include "runtime/step_protocol.h"

namespace shardlm {

void check_step_command(const StepCommand& c, int from, const StepLimits& l) {
  if (c.magic != kStepMagic) fail("malformed step message from rank {} (bad magic {:#x})", from, c.magic);
  if (c.version != kStepProtocolVersion)
    fail("rank {} speaks step protocol version {}, this rank version {}", from, c.version, kStepProtocolVersion);
  switch (StepKind(c.kind)) {
    case StepKind::Begin:
      if (!(c.temperature >= 0) || !(c.top_p > 0 && c.top_p <= 1))
        fail("malformed step message from rank {}: sampler temperature {} top-p {}", from, c.temperature, c.top_p);
      [[fallthrough]];
    case StepKind::End:
      if (c.slot < 0 || c.slot >= l.max_slots)
        fail("malformed step message from rank {}: slot {} (this run has {})", from, c.slot, l.max_slots);
      return;
    case StepKind::Tokens:
      if (c.n_segments == 0 || c.n_segments > uint32_t(l.max_slots) || c.n_tokens <= 0 ||
          c.n_tokens > l.max_step_tokens)
        fail("malformed step message from rank {}: {} segments, {} tokens (limits {} and {})", from, c.n_segments,
             c.n_tokens, l.max_slots, l.max_step_tokens);
      return;
    case StepKind::Report:
    case StepKind::Shutdown:
    case StepKind::Head:
      return;
  }
  fail("malformed step message from rank {}: unknown kind {}", from, c.kind);
}

void check_segment(const WireSegment& s, int from, const StepLimits& l) {
  // start + n_tokens could overflow: compare n_tokens with the room left after start instead.
  if (s.slot < 0 || s.slot >= l.max_slots || s.n_tokens <= 0 || s.start < 0 || s.start > l.max_positions ||
      s.n_tokens > l.max_positions - s.start ||
      s.sample < 0 || s.sample > kSampleLast)
    fail("malformed step message from rank {}: segment of {} tokens at position {} in slot {} (limits: {} slots, {} "
         "positions)",
         from, s.n_tokens, s.start, s.slot, l.max_slots, l.max_positions);
}

}  // namespace shardlm
