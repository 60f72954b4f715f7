#include "runtime/rank.h"

#include <unistd.h>

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
  files_ = open_model_files(o.model_path);
  plan_ = make_plan(files_->config(), o.plan);
  SHARDLM_CHECK(plan_.world_size() == world.size(), "the plan needs {} ranks (--pp {} x --tp {}) but {} were started",
                plan_.world_size(), plan_.pp, plan_.tp, world.size());
  stage_ = plan_.stage_of(world.rank());
  tp_rank_ = plan_.tp_rank_of(world.rank());
  // Every rank takes part in every split, in the same order (the Group contract).
  tp_group_ = world.split(stage_, tp_rank_);
  weights_ = load_weights(*files_, slice_of(plan_, world.rank()));
  prefault_weights(weights_, pool_.size());
  transformer_ = std::make_unique<Transformer>(weights_, pool_);
  if (plan_.tp > 1) {
    transformer_->set_all_reduce(
        [this](float* data, int64_t count) { timed([&] { tp_group_->all_reduce_sum(data, size_t(count)); }); });
  }
  load_s_ = clock.seconds();
  log_debug("rank {}: loaded in {:.2f} s", world.rank(), load_s_);
  // Every rank is ready once this returns (rank 0 then knows the slowest rank's load time).
  world.barrier();
}

void Rank::broadcast(const StepCommand& c, const int32_t* ids) {
  for (int r = 1; r < world_.size(); ++r) {
    world_.send(r, &c, sizeof c);
    if (StepKind(c.kind) == StepKind::Tokens && plan_.stage_of(r) == 0) world_.send(r, ids, size_t(c.n_tokens) * 4);
  }
}

void Rank::execute(const StepCommand& c, const int32_t* ids) {
  switch (StepKind(c.kind)) {
    case StepKind::Begin:
      cache_ = std::make_unique<KvCache>(transformer_->make_cache(KvCache::blocks_for(c.capacity, KvCache::kDefaultBlockSize)));
      if (stage_ == plan_.pp - 1 && tp_rank_ == 0) sampler_ = std::make_unique<Sampler>(SamplerOptions{c.temperature, c.top_p, c.seed});
      return;
    case StepKind::Tokens:
      break;
    default:
      return;
  }
  if (!cache_) fail("rank {}: tokens before any request began", world_.rank());
  Stopwatch clock;
  const int64_t H = config().hidden_size, n = c.n_tokens;
  x_.resize(size_t(n * H));
  if (stage_ == 0) transformer_->embed(ids, n, x_.data());
  else timed([&] { world_.recv(plan_.rank_of(stage_ - 1, tp_rank_), x_.data(), x_.size() * 4); });
  const Segment seg{0, c.start, n};
  transformer_->run_layers(x_.data(), std::span<const Segment>(&seg, 1), *cache_);
  if (stage_ < plan_.pp - 1) {
    timed([&] { world_.send(plan_.rank_of(stage_ + 1, tp_rank_), x_.data(), x_.size() * 4); });
  } else {
    local_logits_.resize(size_t(transformer_->local_vocab()));
    const int64_t last = n - 1;
    transformer_->head(x_.data(), std::span<const int64_t>(&last, 1), local_logits_.data());
    if (tp_rank_ != 0) {
      timed([&] { tp_group_->send(0, local_logits_.data(), local_logits_.size() * 4); });
    } else {
      logits_.resize(size_t(config().vocab_size));
      std::copy(local_logits_.begin(), local_logits_.end(), logits_.begin());
      for (int t = 1; t < plan_.tp; ++t) {
        const TpSlice& s = plan_.slices[size_t(t)];
        timed([&] { tp_group_->recv(t, logits_.data() + s.vocab_begin, size_t(s.vocab_end - s.vocab_begin) * 4); });
      }
      last_token_ = sampler_->sample(logits_.data(), config().vocab_size);
      if (world_.rank() != 0) {
        timed([&] {
          world_.send(0, &last_token_, 4);
          if (c.want_logits) world_.send(0, logits_.data(), logits_.size() * 4);
        });
      }
    }
  }
  step_s_ += clock.seconds();
  ++steps_;
}

void Rank::begin(int64_t capacity, const SamplerOptions& s) {
  StepCommand c;
  c.kind = uint32_t(StepKind::Begin);
  c.capacity = capacity;
  c.temperature = s.temperature, c.top_p = s.top_p, c.seed = s.seed;
  check_step_command(c, 0, capacity, options_.max_context);
  broadcast(c, nullptr);
  execute(c, nullptr);
}

int32_t Rank::step(const int32_t* ids, int64_t n, int64_t start, std::vector<float>* logits) {
  StepCommand c;
  c.kind = uint32_t(StepKind::Tokens);
  c.n_tokens = n, c.start = start;
  c.want_logits = logits != nullptr;
  broadcast(c, ids);
  execute(c, ids);
  const int sampler_rank = plan_.rank_of(plan_.pp - 1, 0);
  if (sampler_rank != 0) {
    world_.recv(sampler_rank, &last_token_, 4);
    if (logits) {
      logits->resize(size_t(config().vocab_size));
      world_.recv(sampler_rank, logits->data(), logits->size() * 4);
    }
  } else if (logits) {
    *logits = logits_;
  }
  return last_token_;
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
          {"threads", pool_.size()},
          {"steps", steps_},
          {"step_s", step_s_},
          {"comm_s", comm_s_},
          {"comm_share", step_s_ > 0 ? comm_s_ / step_s_ : 0.0},
          {"bytes_sent", w.bytes_sent + t.bytes_sent},
          {"backend", world_.backend()}};
}

nlohmann::json Rank::collect_reports() {
  StepCommand c;
  c.kind = uint32_t(StepKind::Report);
  broadcast(c, nullptr);
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
  broadcast(c, nullptr);
}

void Rank::serve() {
  std::vector<int32_t> ids;
  int64_t capacity = 0;
  for (;;) {
    StepCommand c;
    world_.recv(0, &c, sizeof c);
    check_step_command(c, 0, capacity, options_.max_context);
    switch (StepKind(c.kind)) {
      case StepKind::Begin:
        capacity = c.capacity;
        execute(c, nullptr);
        break;
      case StepKind::Tokens:
        if (stage_ == 0) {
          ids.resize(size_t(c.n_tokens));
          world_.recv(0, ids.data(), ids.size() * 4);
        }
        execute(c, ids.data());
        break;
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
