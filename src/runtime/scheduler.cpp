#include "runtime/scheduler.h"

#include <algorithm>
#include <deque>

#include "core/error.h"
#include "core/process_stats.h"

namespace shardlm {

namespace {

enum class Phase { Waiting, Prefill, Decode, Done };

struct Sequence {
  const GenerateRequest* request = nullptr;
  GenerateResult* result = nullptr;
  Phase phase = Phase::Waiting;
  int slot = -1;
  int64_t blocks = 0;       // KV blocks set aside for its longest length
  int64_t prefilled = 0;    // prompt tokens issued
  bool in_flight = false;   // a step that samples for it has not come back
  Stopwatch clock;          // from arrival
  double admitted_at = 0, first_token_at = 0;
};

// The sequences that sample in one issued step, in segment order.
struct Issued {
  std::vector<size_t> samples;
};

}  // namespace

Scheduler::Scheduler(Rank& rank0, const Tokenizer& tokenizer, const SchedulerOptions& options)
    : rank_(rank0), tokenizer_(tokenizer), options_(options) {
  SHARDLM_CHECK(options.max_batch >= 1, "--max-batch must be at least 1");
  SHARDLM_CHECK(options.prefill_chunk >= 0, "--prefill-chunk must be >= 0");
  SHARDLM_CHECK(options.pipeline_depth >= 1, "internal: pipeline depth < 1");
}

std::vector<GenerateResult> Scheduler::run(const std::vector<GenerateRequest>& requests, const TokenCallback& on_token) {
  const ModelConfig& config = rank_.config();
  const int64_t block = rank_.kv_block_size(), total_blocks = rank_.kv_blocks();
  std::vector<GenerateResult> results(requests.size());
  std::vector<Sequence> seqs(requests.size());
  std::vector<int> free_slots;
  for (int s = options_.max_batch - 1; s >= 0; --s) free_slots.push_back(s);
  int64_t free_blocks = total_blocks;
  size_t next_arrival = 0, done = 0;
  int64_t tick = 0;  // steps issued, plus idle turns while waiting for an arrival: the arrival clock
  std::deque<Issued> in_flight;
  stats_ = {};
  Stopwatch wall;

  // Requests in arrival order (stable: equal arrivals keep their order in the list).
  std::vector<size_t> order(requests.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return requests[a].arrival_step < requests[b].arrival_step; });
  std::deque<size_t> waiting;

  auto finish = [&](size_t i) {
    Sequence& s = seqs[i];
    if (s.slot >= 0) {
      rank_.end_sequence(s.slot);
      free_slots.push_back(s.slot);
      free_blocks += s.blocks;
    }
    s.phase = Phase::Done;
    s.result->decode_s = s.first_token_at > 0 ? s.clock.seconds() - s.first_token_at : 0;
    s.result->text = tokenizer_.decode(s.result->output_ids);
    ++done;
  };
  auto reject = [&](size_t i, std::string why) {
    seqs[i].result->error = std::move(why);
    finish(i);
  };

  for (size_t i = 0; i < requests.size(); ++i) {
    seqs[i].request = &requests[i];
    seqs[i].result = &results[i];
  }
  while (done < requests.size()) {
    // Arrivals, then admissions in order while a slot and the blocks are free.
    while (next_arrival < order.size() && requests[order[next_arrival]].arrival_step <= tick) {
      size_t i = order[next_arrival++];
      seqs[i].clock.reset();
      const GenerateRequest& r = requests[i];
      GenerateResult& res = results[i];
      try {
        res.prompt_ids = r.prompt_ids.empty() ? tokenizer_.encode(r.prompt) : r.prompt_ids;
      } catch (const Error& e) {
        reject(i, e.what());
        continue;
      }
      const int64_t n = int64_t(res.prompt_ids.size());
      const int64_t length = n + std::max<int64_t>(r.max_new_tokens, 1);
      if (n == 0) reject(i, "the prompt is empty");
      else if (r.max_new_tokens < 0) reject(i, "the number of tokens to generate must be >= 0");
      else if (length > options_.context)
        reject(i, fmt::format("the prompt has {} tokens and {} more were asked for, but the context holds {} (raise "
                              "--context, at most {})",
                              n, r.max_new_tokens, options_.context, config.max_position_embeddings));
      else if (auto bad = std::find_if(res.prompt_ids.begin(), res.prompt_ids.end(),
                                       [&](int32_t id) { return id < 0 || id >= config.vocab_size; });
               bad != res.prompt_ids.end())
        reject(i, fmt::format("token id {} is outside the vocabulary (size {})", *bad, config.vocab_size));
      else if (KvCache::blocks_for(length, block) > total_blocks)
        reject(i, fmt::format("the request needs {} KV blocks of {} positions but the cache holds {} (raise --kv-memory)",
                              KvCache::blocks_for(length, block), block, total_blocks));
      else waiting.push_back(i);
    }
    while (!waiting.empty() && !free_slots.empty()) {
      Sequence& s = seqs[waiting.front()];
      const int64_t need = KvCache::blocks_for(int64_t(s.result->prompt_ids.size()) +
                                                   std::max<int64_t>(s.request->max_new_tokens, 1), block);
      if (need > free_blocks) break;  // wait for running sequences to finish
      s.slot = free_slots.back();
      free_slots.pop_back();
      s.blocks = need;
      free_blocks -= need;
      s.phase = Phase::Prefill;
      s.admitted_at = s.clock.seconds();
      s.result->queue_s = s.admitted_at;
      rank_.begin_sequence(s.slot, s.request->sampler);
      waiting.pop_front();
    }

    if (done == requests.size()) break;

    // One step, if there is room in the pipeline and work to put in it.
    std::vector<WireSegment> segments;
    std::vector<int32_t> ids;
    Issued issued;
    bool want_logits = false;
    if (int(in_flight.size()) < options_.pipeline_depth) {
      // Decoding sequences, split into as many micro-batches as there are steps in flight.
      int64_t decoding = 0;
      for (const Sequence& s : seqs) decoding += s.phase == Phase::Decode;
      const int64_t quota = (decoding + options_.pipeline_depth - 1) / options_.pipeline_depth;
      for (size_t i = 0; i < seqs.size() && int64_t(issued.samples.size()) < quota; ++i) {
        Sequence& s = seqs[i];
        if (s.phase != Phase::Decode || s.in_flight) continue;
        const int64_t pos = int64_t(s.result->prompt_ids.size() + s.result->output_ids.size()) - 1;
        const int64_t generated = int64_t(s.result->output_ids.size()) + 1;
        segments.push_back({s.slot, segment_sample(true, generated, s.request->max_new_tokens), pos, 1});
        ids.push_back(s.result->output_ids.back());
        s.in_flight = true;
        issued.samples.push_back(i);
      }
      // At most one prefill chunk: the oldest sequence still reading its prompt.
      for (size_t i = 0; i < seqs.size(); ++i) {
        Sequence& s = seqs[i];
        const int64_t n = int64_t(s.result->prompt_ids.size());
        if (s.phase != Phase::Prefill || s.prefilled >= n) continue;
        const int64_t chunk = options_.prefill_chunk > 0 ? std::min(options_.prefill_chunk, n - s.prefilled) : n - s.prefilled;
        const bool last = s.prefilled + chunk == n;
        segments.push_back({s.slot, segment_sample(last, 1, s.request->max_new_tokens), s.prefilled, chunk});
        ids.insert(ids.end(), s.result->prompt_ids.begin() + s.prefilled, s.result->prompt_ids.begin() + s.prefilled + chunk);
        s.prefilled += chunk;
        stats_.prompt_tokens += chunk;
        if (last) {
          s.in_flight = true;
          issued.samples.push_back(i);
          want_logits = s.request->want_first_logits;
        }
        break;
      }
    }
    if (!segments.empty()) {
      // Segments that sample must come in the order of issued.samples: decode ones first, then
      // the final prefill chunk (as built above).
      rank_.issue(segments, ids.data(), want_logits);
      stats_.max_step_tokens = std::max<int64_t>(stats_.max_step_tokens, int64_t(ids.size()));
      ++stats_.steps;
      ++tick;
      if (!issued.samples.empty()) in_flight.push_back(std::move(issued));
      continue;  // fill the pipeline before waiting
    }
    if (in_flight.empty()) {
      SHARDLM_CHECK(next_arrival < order.size() || !waiting.empty(), "internal: scheduler stalled");
      if (waiting.empty()) ++tick;  // nothing runs until the next arrival: let time pass
      continue;
    }
    // Collect the oldest step: one token for each sequence it sampled.
    Rank::StepResult r = rank_.collect();
    Issued step = std::move(in_flight.front());
    in_flight.pop_front();
    const int64_t V = config.vocab_size;
    for (size_t k = 0; k < step.samples.size(); ++k) {
      Sequence& s = seqs[step.samples[k]];
      s.in_flight = false;
      const int32_t token = r.tokens[k];
      GenerateResult& res = *s.result;
      if (s.phase == Phase::Prefill) {
        s.first_token_at = s.clock.seconds();
        res.prefill_s = s.first_token_at - s.admitted_at;
        if (!r.logits.empty()) res.first_logits.assign(r.logits.begin() + int64_t(k) * V, r.logits.begin() + int64_t(k + 1) * V);
        s.phase = Phase::Decode;
      }
      if (s.request->max_new_tokens == 0) {
        finish(step.samples[k]);
        continue;
      }
      res.output_ids.push_back(token);
      res.token_times.push_back(s.clock.seconds());
      ++stats_.generated_tokens;
      if (on_token) on_token(step.samples[k], token, tokenizer_.token_bytes(token));
      const auto& eos = config.eos_token_ids;
      const bool stop = int64_t(res.output_ids.size()) >= s.request->max_new_tokens ||
                        (s.request->stop_at_eos && std::find(eos.begin(), eos.end(), token) != eos.end());
      if (stop) finish(step.samples[k]);
    }
  }
  stats_.seconds = wall.seconds();
  return results;
}

}  // namespace shardlm
