// Distributed runs against the single-rank engine on the same model: pipeline splits must give
// bit-identical logits, tensor-parallel splits logits within 1e-4 relative (a different summation
// order), and both the same 32 greedy tokens — on every backend and topology.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/ranges.h>

#include <cmath>
#include <filesystem>
#include <thread>

#include "comm/group.h"
#include "runtime/cluster.h"
#include "runtime/engine.h"
#include "model/forward_pass.h"
#include "model/kv_cache.h"
#include "runtime/step_protocol.h"
#include "test_models.h"
#include "test_numerics.h"
#include "test_paths.h"

using namespace shardlm;
namespace fs = std::filesystem;

namespace {

const char* kPrompt = "<|im_start|>user\nSplit the model over several machines.<|im_end|>\n";

struct Reference {
  std::vector<int32_t> tokens;
  std::vector<float> logits;
  std::vector<int32_t> sampled;  // seeded temperature sampling: every logit reaches rank 0
};

GenerateRequest sampled_request() {
  GenerateRequest r;
  r.prompt = kPrompt;
  r.max_new_tokens = 16;
  r.stop_at_eos = false;
  r.sampler = SamplerOptions{0.8f, 0.95f, 5};
  return r;
}

const Reference& single_rank(const std::string& model) {
  static std::map<std::string, Reference> cache;
  auto it = cache.find(model);
  if (it != cache.end()) return it->second;
  Engine e({model, 1, 256});
  GenerateRequest r;
  r.prompt = kPrompt;
  r.max_new_tokens = 32;
  r.stop_at_eos = false;
  GenerateResult g = e.generate(r);
  return cache[model] = Reference{g.output_ids, g.first_logits, e.generate(sampled_request()).output_ids};
}

// Segments of groups this process started (names carry the launcher's pid; other test binaries
// may run beside this one).
int count_shm_segments() {
  int n = 0;
  const std::string mine = "shardlm-" + std::to_string(::getpid()) + "-";
  for (const auto& e : fs::directory_iterator("/dev/shm"))
    if (e.path().filename().string().rfind(mine, 0) == 0) ++n;
  return n;
}

void check_split(const std::string& model, int pp, int tp, const std::string& backend, const std::string& topology,
                 std::vector<double> stage_weights = {}) {
  SCOPED_TRACE(fmt::format("pp {} tp {} {} {} stage weights {}", pp, tp, backend, topology, fmt::join(stage_weights, ",")));
  const Reference& ref = single_rank(model);
  ClusterOptions o;
  o.model_path = model;
  o.pp = pp, o.tp = tp;
  o.backend = backend, o.topology = topology;
  o.stage_weights = stage_weights;
  o.threads_per_rank = 1;
  o.context = 256;
  o.timeout = std::chrono::seconds(30);
  Cluster c(o);
  GenerateRequest r;
  r.prompt = kPrompt;
  r.max_new_tokens = 32;
  r.stop_at_eos = false;
  GenerateResult g = c.generate(r);
  EXPECT_EQ(g.output_ids, ref.tokens);
  if (tp == 1) {
    EXPECT_EQ(g.first_logits, ref.logits) << "pipeline split is not bit-identical";
  } else {
    double err = test::max_relative_error(g.first_logits, ref.logits);
    EXPECT_LT(err, 1e-4);
    std::printf("pp %d tp %d %s %s: max relative logit error %.3g\n", pp, tp, backend.c_str(), topology.c_str(), err);
  }
  // Seeded sampling over the whole distribution: the same tokens where the logits are the same
  // bits (a random model's nearly flat distribution reorders under TP's last-bit differences).
  if (tp == 1) {
    EXPECT_EQ(c.generate(sampled_request()).output_ids, ref.sampled) << "seeded sampling differs from one rank";
  }
  nlohmann::json reports = c.rank_reports();
  ASSERT_EQ(int(reports.size()), pp * tp);
  for (int i = 0; i < pp * tp; ++i) {
    EXPECT_EQ(reports[size_t(i)]["rank"].get<int>(), i);
    EXPECT_GT(reports[size_t(i)]["peak_rss_bytes"].get<int64_t>(), 0);
    EXPECT_GE(reports[size_t(i)]["comm_share"].get<double>(), 0.0);
    EXPECT_LE(reports[size_t(i)]["comm_share"].get<double>(), 1.0);
  }
}

struct Split {
  int pp, tp;
};
const Split kSplits[] = {{2, 1}, {3, 1}, {4, 1}, {1, 2}, {1, 3}, {2, 2}};

}  // namespace

TEST(Distributed, EverySplitOverShmMatchesOneRank) {
  for (Split s : kSplits) check_split(test::test_model({}), s.pp, s.tp, "shm", "ring");
}

TEST(Distributed, EverySplitOverTcpRingMatchesOneRank) {
  for (Split s : kSplits) check_split(test::test_model({}), s.pp, s.tp, "tcp", "ring");
}

TEST(Distributed, EverySplitOverTcpMeshMatchesOneRank) {
  for (Split s : kSplits) check_split(test::test_model({}), s.pp, s.tp, "tcp", "mesh");
}

// The lm_head rows sit where the stage weights put them: only on the first stage (the last stage
// sends its activations back and computes nothing of the head), or only on the last.
TEST(Distributed, HeadRowsOnlyOnTheFirstOrOnlyOnTheLastStage) {
  const std::string model = test::test_model({});
  check_split(model, 2, 1, "shm", "ring", {100, 1});
  check_split(model, 3, 1, "shm", "ring", {1, 1, 100});
  check_split(model, 2, 2, "tcp", "mesh", {100, 1});
}

TEST(Distributed, Qwen3WithWideHeadsAndTiedHeadSplits) {
  test::TestModelSpec qwen;
  qwen.arch = "qwen3";
  for (Split s : {Split{2, 1}, Split{1, 3}, Split{2, 2}}) check_split(test::test_model(qwen), s.pp, s.tp, "shm", "ring");
}

TEST(Distributed, ImpossibleSplitsAreRefusedBeforeStarting) {
  ClusterOptions o;
  o.model_path = test::test_model({});
  o.pp = 5;  // 4 layers
  EXPECT_THROW(Cluster c(o), Error);
  o.pp = 1;
  o.tp = 5;  // 4 heads
  EXPECT_THROW(Cluster c(o), Error);
  EXPECT_EQ(count_shm_segments(), 0);
}

namespace {

// Three local ranks of the test model, one stage each, for the tests that kill one of them.
ClusterOptions three_local_stages(const char* backend) {
  ClusterOptions o;
  o.model_path = test::test_model({});
  o.pp = 3;
  o.backend = backend;
  o.context = 256;
  o.threads_per_rank = 1;
  return o;
}

}  // namespace

TEST(Distributed, KilledRankIsNamedAndNothingIsLeftBehind) {
  for (const char* backend : {"shm", "tcp"}) {
    SCOPED_TRACE(backend);
    int before = count_shm_segments();
    const ClusterOptions o = three_local_stages(backend);
    pid_t victim = 0;
    std::string error;
    auto t0 = std::chrono::steady_clock::now();
    double seconds = 0;
    {
      Cluster c(o);
      victim = c.rank_reports()[2]["pid"].get<pid_t>();
      GenerateRequest r;
      r.prompt = kPrompt;
      r.max_new_tokens = 64;
      r.stop_at_eos = false;
      int produced = 0;
      try {
        c.generate(r, [&](int32_t, const std::string&) {
          if (++produced == 3) {
            ::kill(victim, SIGKILL);
            t0 = std::chrono::steady_clock::now();
          }
        });
      } catch (const comm::CommError& e) {
        error = e.what();
      }
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }  // the destructor reaps every rank
    EXPECT_NE(error.find("rank 2"), std::string::npos) << error;
    EXPECT_LT(seconds, 10.0);
    EXPECT_NE(::kill(victim, 0), 0);  // gone (and reaped: no zombie either)
    EXPECT_EQ(count_shm_segments(), before);
  }
}

// A rank lost between runs: the reports' collection names it too (the same path as a run's
// error), and the cluster refuses to run again.
TEST(Distributed, ARankLostBeforeTheReportsIsNamed) {
  for (const char* backend : {"shm", "tcp"}) {
    SCOPED_TRACE(backend);
    ClusterOptions o = three_local_stages(backend);
    o.timeout = std::chrono::milliseconds(5000);
    Cluster c(o);
    const pid_t victim = c.rank_reports()[2]["pid"].get<pid_t>();
    ASSERT_EQ(::kill(victim, SIGKILL), 0);
    siginfo_t info{};
    ASSERT_EQ(::waitid(P_PID, id_t(victim), &info, WEXITED | WNOWAIT), 0);  // ended; the cluster reaps it
    std::string error;
    try {
      c.rank_reports();
    } catch (const comm::CommError& e) {
      error = e.what();
    }
    EXPECT_NE(error.find("rank 2 was killed by signal 9"), std::string::npos) << error;
    GenerateRequest r;
    r.prompt = kPrompt;
    EXPECT_THROW(c.generate(r), Error);
  }
}

TEST(Distributed, StepMessagesAreChecked) {
  const StepLimits limits{4, 64, 256};
  StepCommand c;
  c.kind = uint32_t(StepKind::Tokens);
  c.n_segments = 2, c.n_tokens = 20;
  EXPECT_NO_THROW(check_step_command(c, 0, limits));
  auto error = [&](auto check) {
    try {
      check();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  auto command_error = [&](StepCommand bad) { return error([&] { check_step_command(bad, 3, limits); }); };
  StepCommand m = c;
  m.magic = 0x12345678;
  EXPECT_NE(command_error(m).find("malformed step message from rank 3"), std::string::npos);
  m = c;
  m.version = 9;
  EXPECT_NE(command_error(m).find("step protocol version 9"), std::string::npos);
  m = c;
  m.n_tokens = 1000;  // over the step limit: never allocated
  EXPECT_NE(command_error(m).find("1000 tokens"), std::string::npos);
  m = c;
  m.kind = 77;
  EXPECT_NE(command_error(m).find("unknown kind 77"), std::string::npos);
  m = c;
  m.kind = uint32_t(StepKind::Begin);
  m.slot = 4;  // slots 0..3
  EXPECT_NE(command_error(m).find("slot 4"), std::string::npos);
  m.slot = 1;
  m.top_p = 0;
  EXPECT_NE(command_error(m).find("top-p 0"), std::string::npos);
  WireSegment seg{1, 1, 60, 8};  // positions 60..67 in a context of 64
  EXPECT_NE(error([&] { check_segment(seg, 2, limits); }).find("8 tokens at position 60 in slot 1"), std::string::npos);
  // A start so large that start + n_tokens wraps to a negative number (once accepted).
  seg = {0, 1, INT64_MAX - 2, 8};
  EXPECT_NE(error([&] { check_segment(seg, 2, limits); }).find("8 tokens at position 9223372036854775805"),
            std::string::npos);
  for (int32_t sample : {-1, 3}) {  // 0, kSampleAndGoOn or kSampleLast
    seg = {0, sample, 0, 4};
    EXPECT_NE(error([&] { check_segment(seg, 2, limits); }), "") << sample;
  }
  seg = {0, kSampleLast, 0, 4};
  EXPECT_NO_THROW(check_segment(seg, 2, limits));
}

// The scheduler marks the segment whose token is its sequence's last by the budget (a GPU queues
// no step behind it): a prompt's last chunk of a one-token request, the decode step making the
// budget's last token; a prompt chunk before the last samples nothing.
TEST(Distributed, SegmentsSayWhetherTheirSequenceGoesOn) {
  EXPECT_EQ(segment_sample(false, 1, 1), 0);
  EXPECT_EQ(segment_sample(true, 1, 1), kSampleLast);      // the prompt's last chunk, max_new_tokens 1
  EXPECT_EQ(segment_sample(true, 1, 40), kSampleAndGoOn);  // ... of a longer request
  EXPECT_EQ(segment_sample(true, 39, 40), kSampleAndGoOn);
  EXPECT_EQ(segment_sample(true, 40, 40), kSampleLast);
}

// The forward pass checks its segments again (a scheduler's or a peer's): positions past the
// model's, and a start so large that start + tokens overflows, are errors before any cache use.
TEST(Distributed, SegmentsOutsideTheModelAreRefusedByThePass) {
  ModelConfig c;
  c.max_position_embeddings = 64;
  KvCache cache(1, 1, 32, KvCache::kDefaultBlockSize, 8);
  const Segment inside{0, 60, 4}, past{0, 60, 5}, wraps{0, INT64_MAX - 2, 8};
  EXPECT_EQ(reserve_segments(c, {&inside, 1}, cache), 4);
  for (const Segment& bad : {past, wraps}) {
    try {
      reserve_segments(c, {&bad, 1}, cache);
      ADD_FAILURE() << "segment at " << bad.start << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("are outside the model's 64 positions"), std::string::npos) << e.what();
    }
  }
}

// The report behind shardlm could not run tensor parallel on 5 nodes: 5 divides neither the
// heads nor the kv heads. Here the small preset (16 heads, 4 kv heads, ffn 3072) splits over 5
// ranks (heads 3,3,3,3,4; each kv head held by the ranks whose heads read it) and over PP5 x 1.
TEST(Distributed, FiveRanksSplitAModelFiveDividesNowhere) {
  test::TestModelSpec small;
  small.preset = "small";
  small.dtype = "bf16";
  small.seed = 4;
  std::string model = test::test_model(small);
  Engine e({model, 1, 64});
  GenerateRequest r;
  r.prompt = kPrompt;
  r.max_new_tokens = 8;
  r.stop_at_eos = false;
  GenerateResult ref = e.generate(r);
  for (Split s : {Split{1, 5}, Split{5, 1}}) {
    SCOPED_TRACE(fmt::format("pp {} tp {}", s.pp, s.tp));
    ClusterOptions o;
    o.model_path = model;
    o.pp = s.pp, o.tp = s.tp;
    o.context = 64;
    o.threads_per_rank = 1;
    Cluster c(o);
    GenerateResult g = c.generate(r);
    EXPECT_EQ(g.output_ids, ref.output_ids);
    if (s.tp == 1) EXPECT_EQ(g.first_logits, ref.first_logits);
    else EXPECT_LT(test::max_relative_error(g.first_logits, ref.first_logits), 1e-4);
  }
}
