#include "runtime/rank.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/log.h"
#include "core/process_stats.h"
#include "runtime/plan_memory.h"
#if SHARDLM_HAVE_CUDA
#include "comm/cuda_ipc/peer_group.h"
#include "model/cuda/cuda_transformer.h"
#endif
#if SHARDLM_HAVE_NCCL
#include "comm/nccl/nccl_group.h"
#endif

namespace shardlm {

namespace {
bool cuda_used = false;

std::unique_ptr<ForwardPass> make_forward_pass(const std::string& device, const ModelWeights& w, ThreadPool& pool,
                                               int rank) {
  if (device == "cpu") return std::make_unique<Transformer>(w, pool);
  if (device == "cuda") {
#if SHARDLM_HAVE_CUDA
    cuda_used = true;
    return std::make_unique<CudaTransformer>(w, rank);
#else
    fail("--device cuda: this shardlm was built without CUDA (nvcc was not found when it was configured)");
#endif
  }
  fail("unknown --device '{}' (expected cpu or cuda)", device);
}

}  // namespace

bool cuda_used_in_this_process() { return cuda_used; }

double Rank::comm_s() const {
  double s = comm_s_;
  for (const auto* g : {&device_all_reduce_, &device_pipeline_})
    if (*g) s += (*g)->seconds();
  return s;
}

namespace {
// NCCL over `group` for a pass on `device`, or null with the reason in `why`.
std::unique_ptr<DeviceGroup> nccl_group(comm::Group& group, int device, std::chrono::milliseconds timeout,
                                        std::string* why) {
  *why = "this shardlm was built without NCCL (nccl.h was not found)";
#if SHARDLM_HAVE_NCCL
  return comm::NcclGroup::create(group, device, std::chrono::ceil<std::chrono::seconds>(timeout), why);
#else
  (void)group, (void)device, (void)timeout;
  return nullptr;
#endif
}

// The GPUs' link for tensor-parallel sums: their mapped memory where every rank's GPU is on this
// host and reaches the others' (one kernel a sum; NCCL, in `large`, takes the sums over 4 MB where
// it starts), else NCCL; null with the reasons in `why`.
std::unique_ptr<DeviceGroup> sum_group(comm::Group& group, int device, std::chrono::milliseconds timeout,
                                       std::string* why, std::string* link, std::unique_ptr<DeviceGroup>* large) {
  const auto seconds = std::chrono::ceil<std::chrono::seconds>(timeout);
#if SHARDLM_HAVE_CUDA
  std::string no_peer;
  if (auto g = comm::PeerGroup::create(group, device, seconds, &no_peer)) {
    *link = "peer";
#if SHARDLM_HAVE_NCCL
    std::string no_nccl;
    if (auto nccl = comm::NcclGroup::create(group, device, seconds, &no_nccl)) {
      g->send_large_sums_to(nccl.get());
      *large = std::move(nccl);
      *link = "peer+nccl";
    } else {
      log_debug("tensor-parallel sums over 4 MB: no NCCL ({}), through peer memory too", no_nccl);
    }
#endif
    return g;
  }
  log_debug("tensor-parallel sums: no peer memory ({}), trying NCCL", no_peer);
#endif
  (void)large;
  *link = "nccl";
  return nccl_group(group, device, timeout, why);
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
  last_stage_ = plan_.pp - 1;
  limits_ = {o.max_sequences, o.max_context, int64_t(o.max_sequences) * o.max_context};
  // Every rank takes part in every split, in the same order (the Group contract).
  tp_group_ = world.split(stage_, tp_rank_);
  weights_ = load_weights(*files_, slice_of(plan_, world.rank()));
  prefault_weights(weights_, pool_.size());
  transformer_ = make_forward_pass(o.device, weights_, pool_, world.rank());
  // GPU ranks link through their mapped memory (sums) or NCCL where each rank of a group has its
  // own GPU; every rank of a group decides this alike (device_ordinal() is -1 on every rank of a CPU run).
  const int gpu = transformer_->device_ordinal();
  std::string why;
  if (plan_.tp > 1) {
    transformer_->set_all_reduce(
        [this](float* data, int64_t count) { timed([&] { tp_group_->all_reduce_sum(data, size_t(count)); }); });
    if (gpu >= 0) {
      device_all_reduce_ = sum_group(*tp_group_, gpu, o.timeout, &why, &tp_link_, &device_large_sums_);
      if (device_all_reduce_) transformer_->set_device_all_reduce(device_all_reduce_.get());
      else log_info("rank {}: tensor-parallel sums go through the host: {}", world.rank(), why);
    }
  }
  if (plan_.pp > 1 && gpu >= 0) {
    pipeline_group_ = world.split(tp_rank_, stage_);  // its rank s is stage s
    device_pipeline_ = nccl_group(*pipeline_group_, gpu, o.timeout, &why);
    if (device_pipeline_)
      transformer_->set_device_pipeline(device_pipeline_.get(), stage_ > 0 ? stage_ - 1 : -1,
                                        stage_ < last_stage_ ? stage_ + 1 : -1);
    else log_info("rank {}: pipeline hand-offs go through the host: {}", world.rank(), why);
  }
  // KV cache from the byte budget; every rank must hold as many blocks as rank 0 will hand out,
  // so the run uses the smallest count of any rank (stages hold different numbers of layers).
  const int64_t block_bytes = transformer_->cache_block_bytes();
  int64_t blocks = KvCache::blocks_wanted(o.kv_memory, block_bytes, o.max_sequences, o.max_context);
  SHARDLM_CHECK(blocks >= 1, "--kv-memory {} bytes holds no KV block on rank {} (one block: {} bytes)", o.kv_memory,
                world.rank(), block_bytes);
  // Refused before the barrier, where its memory cannot hold it: a run never reports ready
  // without its cache (a CPU rank's pages are all touched: the kernel would kill it).
  const int64_t cache_bytes = blocks * block_bytes, free = transformer_->free_memory_bytes();
  SHARDLM_CHECK(free < 0 || cache_bytes <= free, "this rank's KV cache needs {} but {} has {} free; {}", gib(cache_bytes),
                transformer_->memory_name(), gib(free), kv_cache_remedy(o.kv_memory));
  std::vector<int64_t> all(size_t(world.size()));
  world.all_gather(&blocks, sizeof blocks, all.data());  // also: every rank has loaded
  kv_blocks_ = *std::min_element(all.begin(), all.end());
  cache_ = std::make_unique<KvCache>(transformer_->make_cache(kv_blocks_));
  if (world.rank() == 0) samplers_.assign(size_t(o.max_sequences), Sampler(SamplerOptions{}));
  greedy_.assign(size_t(o.max_sequences), 1);
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
  greedy_[size_t(c.slot)] = c.temperature == 0.0f;  // as Sampler decides
  if (world_.rank() == 0) samplers_[size_t(c.slot)] = Sampler(SamplerOptions{c.temperature, c.top_p, c.seed});
}

// One row's best logit and its vocabulary id: what a rank sends when only the argmax is needed.
struct BestLogit {
  float value;
  int32_t id;
};
static_assert(sizeof(BestLogit) == 8);

void Rank::head_rows(const float* x, std::span<const int64_t> rows, bool greedy) {
  const int64_t m = int64_t(rows.size()), local = transformer_->local_vocab();
  std::vector<float> reply;
  if (greedy) {  // [m] BestLogit, ids in the whole vocabulary (the lowest wins a tie, as argmax)
    const int64_t base = plan_.vocab_of(world_.rank()).begin;
    std::vector<float> values(static_cast<size_t>(m));
    std::vector<int32_t> ids(static_cast<size_t>(m));
    transformer_->head_argmax(x, rows, values.data(), ids.data());
    reply.resize(size_t(m) * 2);
    for (int64_t i = 0; i < m; ++i) {
      const BestLogit b{values[size_t(i)], int32_t(base + ids[size_t(i)])};
      std::memcpy(reply.data() + 2 * i, &b, sizeof b);
    }
  } else {
    reply.resize(size_t(m * local));
    transformer_->head(x, rows, reply.data());
  }
  if (world_.rank() == 0) own_slices_.push_back(std::move(reply));
  else timed([&] { world_.send(0, reply.data(), reply.size() * 4); });
}

void Rank::deferred_head() {
  if (pending_heads_.empty()) fail("malformed step message from rank 0: a head command with no step waiting for it");
  Stopwatch clock;
  const PendingHead p = pending_heads_.front();
  pending_heads_.pop_front();
  const int64_t H = config().hidden_size;
  final_rows_.resize(size_t(p.rows * H));
  timed([&] { world_.recv(plan_.rank_of(last_stage_, tp_rank_), final_rows_.data(), final_rows_.size() * 4); });
  rows_.resize(size_t(p.rows));
  for (int64_t i = 0; i < p.rows; ++i) rows_[size_t(i)] = i;
  head_rows(final_rows_.data(), rows_, p.greedy);
  count_step(clock.seconds());  // part of its step's work, timed as a step of its own (waiting included)
}

bool Rank::greedy_step(std::span<const WireSegment> segments, bool want_logits) const {
  if (want_logits) return false;
  for (const WireSegment& s : segments)
    if (s.sample && !greedy_[size_t(s.slot)]) return false;
  return true;
}

void Rank::count_step(double seconds) {
  step_s_ += seconds;
  longest_step_s_ = std::max(longest_step_s_, seconds);
}

void Rank::run_step(std::span<const WireSegment> segments, const int32_t* ids, bool want_logits) {
  Stopwatch clock;
  const int64_t H = config().hidden_size;
  segments_.clear();
  rows_.clear();
  int64_t n = 0;
  const bool greedy = greedy_step(segments, want_logits);
  for (const WireSegment& s : segments) {
    segments_.push_back({s.slot, s.start, s.n_tokens});
    n += s.n_tokens;
    if (s.sample) rows_.push_back(n - 1);
  }
  // Grown, never shrunk: resizing back up would zero-fill it again (16 MB for a 2K-token prompt of
  // the 1b preset: 1.5 ms of a 10 ms prefill on a GPU, which writes only the rows it reads back).
  const size_t x_floats = size_t(n * H);
  if (x_.size() < x_floats) x_.resize(x_floats);
  // x between stages: through the host, or on the GPUs (the pass sends and receives it itself).
  const bool host_hand_off = !device_pipeline_;
  if (stage_ != 0 && host_hand_off)
    timed([&] { world_.recv(plan_.rank_of(stage_ - 1, tp_rank_), x_.data(), x_floats * 4); });
  // A stage that hands x on through the host reads all of it; the last one only its sampled rows.
  // The last stage's sampled rows go to the earlier stages that hold a slice of the head, if any;
  // else only this rank's head reads them (a GPU keeps them on the device).
  bool earlier_heads = false;
  for (int s = 0; s < last_stage_; ++s) earlier_heads |= plan_.holds_head(plan_.rank_of(s, tp_rank_));
  const bool head_only = !earlier_heads && plan_.holds_head(world_.rank());
  bool go_on = true;
  for (const WireSegment& s : segments) go_on &= s.sample != kSampleLast;
  const RowsRead read = stage_ == last_stage_ ? RowsRead{false, rows_, head_only, go_on}
                        : host_hand_off       ? RowsRead{}
                                              : RowsRead{false, {}};
  transformer_->run_layers(stage_ == 0 ? ids : nullptr, x_.data(), segments_, *cache_, read);
  if (stage_ < last_stage_) {
    if (host_hand_off) timed([&] { world_.send(plan_.rank_of(stage_ + 1, tp_rank_), x_.data(), x_floats * 4); });
    if (!rows_.empty() && plan_.holds_head(world_.rank())) pending_heads_.push_back({int64_t(rows_.size()), greedy});
  } else if (!rows_.empty()) {
    // The sampled rows' final activations to the earlier stages' head rows, then this rank's own.
    if (earlier_heads) {
      final_rows_.resize(rows_.size() * size_t(H));
      for (size_t i = 0; i < rows_.size(); ++i)
        std::copy_n(x_.data() + rows_[i] * H, H, final_rows_.data() + i * size_t(H));
    }
    for (int s = 0; s < last_stage_; ++s)
      if (plan_.holds_head(plan_.rank_of(s, tp_rank_)))
        timed([&] { world_.send(plan_.rank_of(s, tp_rank_), final_rows_.data(), final_rows_.size() * 4); });
    if (plan_.holds_head(world_.rank())) head_rows(x_.data(), rows_, greedy);
  }
  count_step(clock.seconds());
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
  Expected e;
  e.want_logits = want_logits;
  e.greedy = greedy_step(segments, want_logits);
  for (const WireSegment& s : segments) {
    check_segment(s, 0, limits_);
    c.n_tokens += s.n_tokens;
    if (s.sample) e.slots.push_back(s.slot);
  }
  check_step_command(c, 0, limits_);
  broadcast(c, segments, ids);
  run_step(segments, ids, want_logits);
  if (!e.slots.empty()) expected_.push_back(std::move(e));
}

Rank::StepResult Rank::collect() {
  SHARDLM_CHECK(!expected_.empty(), "internal: collect() with no step in flight");
  Expected e = std::move(expected_.front());
  expected_.pop_front();
  // The earlier stages' head rows of this step (rank 0's own among them).
  StepCommand head;
  head.kind = uint32_t(StepKind::Head);
  for (int r = 1; r < world_.size(); ++r)
    if (plan_.stage_of(r) < last_stage_ && plan_.holds_head(r)) world_.send(r, &head, sizeof head);
  if (last_stage_ > 0 && plan_.holds_head(0)) deferred_head();

  const int64_t m = int64_t(e.slots.size()), V = config().vocab_size;
  StepResult result;
  std::vector<BestLogit> best(size_t(m), BestLogit{-std::numeric_limits<float>::infinity(), 0});
  if (!e.greedy) logits_.resize(size_t(m * V));
  std::vector<float> received;
  for (int r = 0; r < world_.size(); ++r) {
    if (!plan_.holds_head(r)) continue;
    const VocabRange v = plan_.vocab_of(r);
    const int64_t w = v.end - v.begin;
    if (r == 0) {
      received = std::move(own_slices_.front());
      own_slices_.pop_front();
    } else {
      received.resize(size_t(e.greedy ? 2 * m : m * w));
      world_.recv(r, received.data(), received.size() * 4);
    }
    const float* src = received.data();
    for (int64_t i = 0; i < m; ++i) {
      if (e.greedy) {
        BestLogit b;
        std::memcpy(&b, src + 2 * i, sizeof b);
        SHARDLM_CHECK(b.id >= v.begin && b.id < v.end, "rank {} sent token id {} outside its rows [{}, {})", r, b.id,
                      v.begin, v.end);
        // Ranks come in vocabulary order and a later one wins only with a strictly larger logit:
        // the lowest id wins a tie, as argmax over the whole row does (id 0 if none is > -inf).
        if (b.value > best[size_t(i)].value) best[size_t(i)] = b;
      } else {
        std::copy(src + i * w, src + (i + 1) * w, logits_.data() + i * V + v.begin);
      }
    }
  }
  for (int64_t i = 0; i < m; ++i)
    result.tokens.push_back(e.greedy ? best[size_t(i)].id
                                     : samplers_[size_t(e.slots[size_t(i)])].sample(logits_.data() + i * V, V));
  if (e.want_logits) result.logits = logits_;
  return result;
}

nlohmann::json Rank::report() const {
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  const ModelSlice& s = weights_.slice;
  comm::CommStats w = world_.stats(), t = tp_group_->stats();
  uint64_t device_bytes_sent = 0;
  for (const auto* g : {&device_all_reduce_, &device_pipeline_})
    if (*g) device_bytes_sent += (*g)->bytes_sent();
  return {{"rank", world_.rank()},
          {"host", host},
          {"pid", ::getpid()},
          {"stage", stage_},
          {"tp_rank", tp_rank_},
          {"layers", {s.layer_begin, s.layer_end}},
          {"heads", {s.head_begin, s.head_end}},
          {"lm_head_rows", s.head ? nlohmann::json{s.vocab_begin, s.vocab_end} : nlohmann::json(nullptr)},
          {"load_s", load_s_},
          {"peak_rss_bytes", peak_rss_bytes()},
          {"weight_bytes", weights_.bytes},
          {"kv_cache_bytes", cache_->bytes()},
          {"device", options_.device},
          {"device_bytes", transformer_->device_bytes()},
          {"threads", pool_.size()},
          {"steps", steps_},
          {"tokens", tokens_},
          {"step_s", step_s_},
          {"longest_step_s", longest_step_s_},
          {"comm_s", comm_s()},
          {"comm_share", step_s_ > 0 ? comm_s() / step_s_ : 0.0},
          {"tp_all_reduce", plan_.tp == 1 ? "none" : device_all_reduce_ ? tp_link_ : "host"},
          {"pp_hand_off", plan_.pp == 1 ? "none" : device_pipeline_ ? "nccl" : "host"},
          {"bytes_sent", w.bytes_sent + t.bytes_sent + device_bytes_sent},
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
      case StepKind::Head:
        deferred_head();
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
