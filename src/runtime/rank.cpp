#include "runtime/rank.h"

#include <unistd.h>

#include <algorithm>

#include "core/log.h"
#include "core/process_stats.h"

namespace shardlm {

namespace {
ModelSlice slice_of(const Plan& p, int rank) {
  const StageRange& st = p.stages[size_t(p.stage_of(rank))];
  const TpSlice& s = p.slices[size_t(p.tp_rank_of(rank))];
  ModelSlice m;
  m.layer_begin = st.layer_begin, m.layer_end = st.layer_end;
  m.embedding = p.stage_of(rank) == 0;
  m.head = p.stage_of(rank) == p.pp - 1;
  m.head_begin = s.head_begin, m.head_end = s.head_end;
  m.kv_head_begin = s.kv_head_begin, m.kv_head_end = s.kv_head_end;
  m.ffn_begin = s.ffn_begin, m.ffn_end = s.ffn_end;
  m.vocab_begin = s.vocab_begin, m.vocab_end = s.vocab_end;
  return m;
}
}  // namespace

template <class F>
void Rank::timed(F&& f) {
  Stopwatch clock;
  f();
  comm_s_ += clock.seconds();
}

Rank::Rank(const RankOptions& o, comm::Group& world) : options_(o), world_(world), pool_(std::max(1, o.threads)) {
  Stopwatch clock;
  SHARDLM_CHECK(o.max_sequences >= 1 && o.max_sequences <= 4096, "--max-batch must be in 1..4096 (got {})", o.max_sequences);
  files_ = open_model_files(o.model_path);
  plan_ = make_plan(files_->config(), o.plan);
  SHARDLM_CHECK(plan_.world_size() == world.size(), "the plan needs {} ranks (--pp {} x --tp {}) but {} were started",
                plan_.world_size(), plan_.pp, plan_.tp, world.size());
  stage_ = plan_.stage_of(world.rank());
  tp_rank_ = plan_.tp_rank_of(world.rank());
  sampler_rank_ = plan_.rank_of(plan_.pp - 1, 0);
  limits_ = {o.max_sequences, o.max_context, int64_t(o.max_sequences) * o.max_context};
  // Every rank takes part in every split, in the same order (the Group contract).
  tp_group_ = world.split(stage_, tp_rank_);
  weights_ = load_weights(*files_, slice_of(plan_, world.rank()));
  prefault_weights(weights_, pool_.size());
  transformer_ = std::make_unique<Transformer>(weights_, pool_);
  if (plan_.tp > 1) {
    transformer_->set_all_reduce(
        [this](float* data, int64_t count) { timed([&] { tp_group_->all_reduce_sum(data, size_t(count)); }); });
  }
  // KV cache from the byte budget; every rank must hold as many blocks as rank 0 will hand out,
  // so the run uses the smallest count of any rank (stages hold different numbers of layers).
  const int64_t block_bytes = transformer_->cache_block_bytes();
  const int64_t block = KvCache::kDefaultBlockSize;
  int64_t blocks = o.kv_memory > 0 ? o.kv_memory / block_bytes
                                   : int64_t(o.max_sequences) * KvCache::blocks_for(o.max_context, block);
  SHARDLM_CHECK(blocks >= 1, "--kv-memory {} bytes holds no KV block on rank {} (one block: {} bytes)", o.kv_memory,
                world.rank(), block_bytes);
  std::vector<int64_t> all(size_t(world.size()));
  world.all_gather(&blocks, sizeof blocks, all.data());  // also: every rank has loaded
  kv_blocks_ = *std::min_element(all.begin(), all.end());
  cache_ = std::make_unique<KvCache>(transformer_->make_cache(kv_blocks_));
  if (world.rank() == sampler_rank_) samplers_.assign(size_t(o.max_sequences), Sampler(SamplerOptions{}));
  load_s_ = clock.seconds();
  log_debug("rank {}: loaded in {:.2f} s, KV cache {} blocks ({:.1f} MB)", world.rank(), load_s_, kv_blocks_,
            cache_->bytes() / 1e6);
}

void Rank::broadcast(const StepCommand& c, std::span<const WireSegment> segments, const int32_t* ids) {
  for (int r = 1; r < world_.size(); ++r) {
    world_.send(r, &c, sizeof c);
    if (StepKind(c.kind) != StepKind::Tokens) continue;
    world_.send(r, segments.data(), segments.size_bytes());
    if (plan_.stage_of(r) == 0) world_.send(r, ids, size_t(c.n_tokens) * 4);
  }
}

void Rank::begin(const StepCommand& c) {
  cache_->release(c.slot);
  if (world_.rank() == sampler_rank_) samplers_[size_t(c.slot)] = Sampler(SamplerOptions{c.temperature, c.top_p, c.seed});
}

void Rank::run_step(std::span<const WireSegment> segments, const int32_t* ids, bool want_logits) {
  Stopwatch clock;
  const int64_t H = config().hidden_size, V = config().vocab_size;
  segments_.clear();
  rows_.clear();
  int64_t n = 0;
  for (const WireSegment& s : segments) {
    segments_.push_back({s.slot, s.start, s.n_tokens});
    n += s.n_tokens;
    if (s.sample) rows_.push_back(n - 1);
  }
  x_.resize(size_t(n * H));
  if (stage_ == 0) transformer_->embed(ids, n, x_.data());
  else timed([&] { world_.recv(plan_.rank_of(stage_ - 1, tp_rank_), x_.data(), x_.size() * 4); });
  transformer_->run_layers(x_.data(), segments_, *cache_);
  if (stage_ < plan_.pp - 1) {
    timed([&] { world_.send(plan_.rank_of(stage_ + 1, tp_rank_), x_.data(), x_.size() * 4); });
  } else if (!rows_.empty()) {
    const int64_t m = int64_t(rows_.size()), local = transformer_->local_vocab();
    local_logits_.resize(size_t(m * local));
    transformer_->head(x_.data(), rows_, local_logits_.data());
    if (tp_rank_ != 0) {
      timed([&] { tp_group_->send(0, local_logits_.data(), local_logits_.size() * 4); });
    } else {
      // Full rows of logits: this rank's vocabulary slice, then every other TP rank's.
      logits_.resize(size_t(m * V));
      for (int t = 0; t < plan_.tp; ++t) {
        const TpSlice& sl = plan_.slices[size_t(t)];
        const int64_t w = sl.vocab_end - sl.vocab_begin;
        const float* src = local_logits_.data();
        if (t > 0) {
          gathered_.resize(size_t(m * w));
          timed([&] { tp_group_->recv(t, gathered_.data(), gathered_.size() * 4); });
          src = gathered_.data();
        }
        for (int64_t i = 0; i < m; ++i) std::copy(src + i * w, src + (i + 1) * w, logits_.data() + i * V + sl.vocab_begin);
      }
      StepResult result;
      size_t row = 0;
      for (const WireSegment& s : segments)
        if (s.sample) {
          result.tokens.push_back(samplers_[size_t(s.slot)].sample(logits_.data() + int64_t(row) * V, V));
          ++row;
        }
      if (want_logits) result.logits = logits_;
      if (world_.rank() == 0) {
        local_results_.push_back(std::move(result));
      } else {
        timed([&] {
          world_.send(0, result.tokens.data(), result.tokens.size() * 4);
          if (want_logits) world_.send(0, result.logits.data(), result.logits.size() * 4);
        });
      }
    }
  }
  const double s = clock.seconds();
  step_s_ += s;
  longest_step_s_ = std::max(longest_step_s_, s);
  tokens_ += n;
  ++steps_;
}

void Rank::begin_sequence(int slot, const SamplerOptions& s) {
  StepCommand c;
  c.kind = uint32_t(StepKind::Begin);
  c.slot = slot;
  c.temperature = s.temperature, c.top_p = s.top_p, c.seed = s.seed;
  check_step_command(c, 0, limits_);
  broadcast(c, {}, nullptr);
  begin(c);
}

void Rank::end_sequence(int slot) {
  StepCommand c;
  c.kind = uint32_t(StepKind::End);
  c.slot = slot;
  check_step_command(c, 0, limits_);
  broadcast(c, {}, nullptr);
  cache_->release(slot);
}

void Rank::issue(std::span<const WireSegment> segments, const int32_t* ids, bool want_logits) {
  StepCommand c;
  c.kind = uint32_t(StepKind::Tokens);
  c.n_segments = uint32_t(segments.size());
  c.want_logits = want_logits;
  int samples = 0;
  for (const WireSegment& s : segments) {
    check_segment(s, 0, limits_);
    c.n_tokens += s.n_tokens;
    samples += s.sample;
  }
  check_step_command(c, 0, limits_);
  broadcast(c, segments, ids);
  run_step(segments, ids, want_logits);
  if (samples > 0) expected_.push_back({samples, want_logits});
}

Rank::StepResult Rank::collect() {
  SHARDLM_CHECK(!expected_.empty(), "internal: collect() with no step in flight");
  auto [count, with_logits] = expected_.front();
  expected_.pop_front();
  if (sampler_rank_ == 0) {
    StepResult r = std::move(local_results_.front());
    local_results_.pop_front();
    return r;
  }
  StepResult r;
  r.tokens.resize(size_t(count));
  world_.recv(sampler_rank_, r.tokens.data(), r.tokens.size() * 4);
  if (with_logits) {
    r.logits.resize(size_t(count) * size_t(config().vocab_size));
    world_.recv(sampler_rank_, r.logits.data(), r.logits.size() * 4);
  }
  return r;
}

nlohmann::json Rank::report() const {
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  const ModelSlice& s = weights_.slice;
  comm::CommStats w = world_.stats(), t = tp_group_->stats();
  return {{"rank", world_.rank()},
          {"host", host},
          {"pid", ::getpid()},
          {"stage", stage_},
          {"tp_rank", tp_rank_},
          {"layers", {s.layer_begin, s.layer_end}},
          {"heads", {s.head_begin, s.head_end}},
          {"load_s", load_s_},
          {"peak_rss_bytes", peak_rss_bytes()},
          {"weight_bytes", weights_.bytes},
          {"kv_cache_bytes", cache_->bytes()},
          {"threads", pool_.size()},
          {"steps", steps_},
          {"tokens", tokens_},
          {"step_s", step_s_},
          {"longest_step_s", longest_step_s_},
          {"comm_s", comm_s_},
          {"comm_share", step_s_ > 0 ? comm_s_ / step_s_ : 0.0},
          {"bytes_sent", w.bytes_sent + t.bytes_sent},
          {"backend", world_.backend()}};
}

nlohmann::json Rank::collect_reports() {
  StepCommand c;
  c.kind = uint32_t(StepKind::Report);
  broadcast(c, {}, nullptr);
  nlohmann::json all = nlohmann::json::array();
  all.push_back(report());
  for (int r = 1; r < world_.size(); ++r) {
    uint64_t len = 0;
    world_.recv(r, &len, 8);
    SHARDLM_CHECK(len < (1u << 20), "rank {} sent a report of {} bytes", r, len);
    std::string text(len, '\0');
    world_.recv(r, text.data(), len);
    try {
      all.push_back(nlohmann::json::parse(text));
    } catch (const nlohmann::json::exception&) {
      fail("rank {} sent a malformed report", r);
    }
  }
  return all;
}

void Rank::shutdown() {
  StepCommand c;
  c.kind = uint32_t(StepKind::Shutdown);
  broadcast(c, {}, nullptr);
}

void Rank::serve() {
  std::vector<WireSegment> segments;
  std::vector<int32_t> ids;
  for (;;) {
    StepCommand c;
    world_.recv(0, &c, sizeof c);
    check_step_command(c, 0, limits_);
    switch (StepKind(c.kind)) {
      case StepKind::Begin:
        begin(c);
        break;
      case StepKind::End:
        cache_->release(c.slot);
        break;
      case StepKind::Tokens: {
        segments.resize(c.n_segments);
        world_.recv(0, segments.data(), segments.size() * sizeof(WireSegment));
        int64_t total = 0;
        for (const WireSegment& s : segments) {
          check_segment(s, 0, limits_);
          total += s.n_tokens;
        }
        if (total != c.n_tokens) fail("malformed step message from rank 0: segments hold {} tokens, header says {}", total, c.n_tokens);
        if (stage_ == 0) {
          ids.resize(size_t(c.n_tokens));
          world_.recv(0, ids.data(), ids.size() * 4);
        }
        run_step(segments, ids.data(), c.want_logits);
        break;
      }
      case StepKind::Report: {
        std::string text = report().dump();
        uint64_t len = text.size();
        world_.send(0, &len, 8);
        world_.send(0, text.data(), len);
        break;
      }
      case StepKind::Shutdown:
        return;
    }
  }
}

}  // namespace shardlm
