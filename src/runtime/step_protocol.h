// What rank 0 tells every other rank, on the wire: plain little-endian structs checked on arrival,
// so a message that is not one of these is an error naming the sender, never undefined behaviour.
//
//   Begin    {slot, sampler}      a sequence starts in cache slot `slot`
//   End      {slot}               its cache blocks go back to the pool
//   Tokens   {n_segments, n_tokens} + n_segments x WireSegment (+ n_tokens ids, to stage 0 only)
//            one step: a batch of sequence segments (decode tokens and prefill chunks)
//   Head     {}                   compute the lm_head rows of the oldest step that sampled and
//                                 whose rows this rank has not done (stages before the last)
//   Report / Shutdown
#pragma once
#include <cstdint>

#include "core/error.h"

namespace shardlm {

constexpr uint32_t kStepMagic = 0x534c4d53;  // "SMLS"
constexpr uint32_t kStepProtocolVersion = 3;

enum class StepKind : uint32_t { Begin = 1, End = 2, Tokens = 3, Report = 4, Shutdown = 5, Head = 6 };

struct StepCommand {
  uint32_t magic = kStepMagic;
  uint32_t version = kStepProtocolVersion;
  uint32_t kind = 0;
  int32_t slot = 0;           // Begin, End
  uint32_t n_segments = 0;    // Tokens
  uint32_t want_logits = 0;   // Tokens: rank 0 also returns the logits of the sampled rows
  int64_t n_tokens = 0;       // Tokens: sum of the segments' tokens
  float temperature = 0, top_p = 1;  // Begin
  uint64_t seed = 0;                 // Begin
};
static_assert(sizeof(StepCommand) == 48);

constexpr int32_t kSampleAndGoOn = 1, kSampleLast = 2;
struct WireSegment {
  int32_t slot = 0;
  // Sample the next token after this segment's last token: kSampleAndGoOn, or kSampleLast when
  // that token is the sequence's last by its budget (no step of it follows); 0: don't sample.
  int32_t sample = 0;
  int64_t start = 0;
  int64_t n_tokens = 0;
};
static_assert(sizeof(WireSegment) == 24);
// A segment's `sample`: 0 unless it samples; then whether the sequence takes a step after it, that
// is, whether the `generated` tokens it will have then are still under its budget.
constexpr int32_t segment_sample(bool samples, int64_t generated, int64_t max_new_tokens) {
  return !samples ? 0 : generated >= max_new_tokens ? kSampleLast : kSampleAndGoOn;
}

struct StepLimits {
  int max_slots = 1;             // sequences that may be live at once
  int64_t max_positions = 4096;  // context of one sequence
  int64_t max_step_tokens = 4096;
};

// Throws Error naming `from` unless the command is well formed within `limits`.
void check_step_command(const StepCommand& c, int from, const StepLimits& limits);
void check_segment(const WireSegment& s, int from, const StepLimits& limits);

}  // namespace shardlm
