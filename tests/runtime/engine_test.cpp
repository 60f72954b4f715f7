// Engine behaviour on generated models: the KV cache, sharded files, GGUF conversions and the
// sampler, each compared with a computation that does not use the feature under test.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "formats/model_files.h"
#include "runtime/engine.h"
#include "test_models.h"
#include "test_numerics.h"
#include "test_paths.h"

using namespace shardlm;
namespace fs = std::filesystem;

namespace {

GenerateResult greedy(Engine& e, const std::string& prompt, int64_t n) {
  GenerateRequest r;
  r.prompt = prompt;
  r.max_new_tokens = n;
  r.stop_at_eos = false;
  return e.generate(r);
}

const char* kPrompt = "The quick brown fox jumps over the lazy dog because";

}  // namespace

TEST(Engine, IncrementalDecodeEqualsRecomputingTheWholeSequence) {
  // Each decode step reads keys/values of earlier positions from the cache; running prompt plus
  // generated tokens as one prefill must give the same next-token logits.
  Engine e({test::test_model({}), 0, 128});
  GenerateResult r = greedy(e, kPrompt, 12);
  std::vector<int32_t> all = r.prompt_ids;
  all.insert(all.end(), r.output_ids.begin(), r.output_ids.end() - 1);
  GenerateRequest once;
  once.prompt_ids = all;
  once.max_new_tokens = 1;
  GenerateResult full = e.generate(once);
  EXPECT_EQ(full.output_ids[0], r.output_ids.back());
  // And a decode from the middle: prefix + one more token matches.
  std::vector<int32_t> prefix(all.begin(), all.begin() + long(r.prompt_ids.size()) + 5);
  once.prompt_ids = prefix;
  EXPECT_EQ(e.generate(once).output_ids[0], r.output_ids[5]);
}

TEST(Engine, ThreadCountDoesNotChangeTokens) {
  std::string model = test::test_model({});
  Engine one({model, 1, 128}), two({model, 2, 128}), three({model, 3, 128});
  auto a = greedy(one, kPrompt, 16), b = greedy(two, kPrompt, 16), c = greedy(three, kPrompt, 16);
  EXPECT_EQ(a.output_ids, b.output_ids);
  EXPECT_EQ(a.output_ids, c.output_ids);
  EXPECT_LT(test::max_relative_error(b.first_logits, a.first_logits), 1e-5);
}

TEST(Engine, ShardedFolderGivesIdenticalLogits) {
  test::TestModelSpec sharded;
  sharded.shard_mib = 64;  // the 0.32 GB tiny model: embedding | layers + norm | lm_head
  std::string dir = test::test_model(sharded);
  ASSERT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
  ASSERT_TRUE(fs::exists(dir + "/model-00003-of-00003.safetensors"));
  Engine a({test::test_model({}), 0, 128}), b({dir, 0, 128});
  EXPECT_NE(b.files().description().find("3 shards"), std::string::npos) << b.files().description();
  auto ra = greedy(a, kPrompt, 8), rb = greedy(b, kPrompt, 8);
  EXPECT_EQ(ra.first_logits, rb.first_logits);  // same bytes, same arithmetic: bit-identical
  EXPECT_EQ(ra.output_ids, rb.output_ids);
}

TEST(Engine, GeneratorIsDeterministicAndUsesNoZeros) {
  std::string a = test::test_model({});
  auto files = open_model_files(a);
  const TensorView* q = files->find("model.layers.0.self_attn.q_proj.weight");
  ASSERT_TRUE(q);
  const float* v = static_cast<const float*>(q->data);
  double sum = 0, sq = 0;
  int64_t zeros = 0;
  for (int64_t i = 0; i < q->numel(); ++i) sum += v[i], sq += double(v[i]) * v[i], zeros += v[i] == 0;
  EXPECT_EQ(zeros, 0);
  EXPECT_NEAR(sum / double(q->numel()), 0.0, 1e-3);
  EXPECT_NEAR(std::sqrt(sq / double(q->numel())), 0.02, 5e-4);  // std 0.02
  // Same seed in bf16: the bf16 value of every element is the rounding of the f32 one.
  test::TestModelSpec bf;
  bf.dtype = "bf16";
  auto bfiles = open_model_files(test::test_model(bf));
  const TensorView* qb = bfiles->find("model.layers.0.self_attn.q_proj.weight");
  ASSERT_EQ(qb->dtype, DType::BF16);
  const uint16_t* h = static_cast<const uint16_t*>(qb->data);
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(h[i], f32_to_bf16(v[i])) << i;
}

TEST(Engine, GgufF32ConversionMatchesTheHuggingFaceFolder) {
  for (const char* arch : {"llama", "qwen3"}) {
    test::TestModelSpec spec;
    spec.arch = arch;
    std::string src = test::test_model(spec);
    std::string gguf = test::scratch_dir(std::string("gguf_f32_") + arch) + "/m.gguf";
    write_gguf_model(*open_model_files(src), gguf, DType::F32);
    Engine a({src, 0, 128}), b({gguf, 0, 128});
    auto ra = greedy(a, kPrompt, 16), rb = greedy(b, kPrompt, 16);
    EXPECT_EQ(ra.prompt_ids, rb.prompt_ids) << "GGUF tokenizer differs (" << arch << ")";
    EXPECT_LT(test::max_relative_error(rb.first_logits, ra.first_logits), 1e-5) << arch;
    EXPECT_EQ(ra.output_ids, rb.output_ids) << arch;
  }
}

// Quantized GGUF files, checked two ways:
// - exactly: against an f32 GGUF holding the dequantized weights of the quantized file, the
//   engine's quantized kernels must agree to f32 rounding (1e-5) with the same greedy tokens;
// - approximately: against the f32 model they were made from. Measured on this tiny llama (max
//   relative logit error over the whole vocabulary): q8_0 0.017, q4_0 0.26 (random Gaussian weights
//   are the worst case for 4 bits). Tolerances: q8_0 3e-2 with the same top token; q4_0 0.35.
TEST(Engine, GgufQuantizedMatchesItsDequantizedWeightsAndStaysCloseToF32) {
  std::string src = test::test_model({});
  Engine ref({src, 0, 128});
  auto rr = greedy(ref, kPrompt, 1);
  for (auto [dtype, tolerance] : {std::pair{DType::Q8_0, 3e-2}, std::pair{DType::Q4_0, 0.35}}) {
    std::string dir = test::scratch_dir(std::string("gguf_") + std::string(dtype_name(dtype)));
    write_gguf_model(*open_model_files(src), dir + "/q.gguf", dtype);
    write_gguf_model(*open_model_files(dir + "/q.gguf"), dir + "/dequantized.gguf", DType::F32);
    Engine q({dir + "/q.gguf", 0, 128}), dq({dir + "/dequantized.gguf", 0, 128});
    ASSERT_EQ(q.files().find("model.layers.0.mlp.up_proj.weight")->dtype, dtype);
    auto rq = greedy(q, kPrompt, 16), rdq = greedy(dq, kPrompt, 16);
    EXPECT_LT(test::max_relative_error(rq.first_logits, rdq.first_logits), 1e-5) << dtype_name(dtype);
    EXPECT_EQ(rq.output_ids, rdq.output_ids) << dtype_name(dtype);

    double err = test::max_relative_error(rq.first_logits, rr.first_logits);
    std::printf("%s: max relative logit error vs the f32 model %.4g\n", std::string(dtype_name(dtype)).c_str(), err);
    EXPECT_LT(err, tolerance) << dtype_name(dtype);
    if (dtype == DType::Q8_0) {
      EXPECT_EQ(rq.output_ids[0], rr.output_ids[0]);
    }
  }
}

TEST(Engine, SamplerIsSeededAndTopPNarrowsToGreedy) {
  Engine e({test::test_model({}), 0, 128});
  GenerateRequest r;
  r.prompt = kPrompt;
  r.max_new_tokens = 12;
  r.stop_at_eos = false;
  r.sampler = {1.0f, 1.0f, 42};
  auto a = e.generate(r), b = e.generate(r);
  EXPECT_EQ(a.output_ids, b.output_ids);  // same seed, same tokens
  r.sampler.seed = 43;
  EXPECT_NE(e.generate(r).output_ids, a.output_ids);  // 12 draws from a near-uniform 150k vocabulary
  r.sampler = {1.0f, 1e-6f, 42};  // the nucleus holds only the top token
  EXPECT_EQ(e.generate(r).output_ids, greedy(e, kPrompt, 12).output_ids);
}

TEST(Engine, BadRequestsAreErrors) {
  Engine e({test::test_model({}), 0, 32});
  GenerateRequest r;
  r.prompt = "";
  EXPECT_THROW(e.generate(r), Error);
  r.prompt = kPrompt;
  r.max_new_tokens = 100;  // prompt + 100 > context 32
  EXPECT_THROW(e.generate(r), Error);
  r.max_new_tokens = 4;
  r.prompt_ids = {1, 2, 1 << 30};  // id outside the vocabulary
  EXPECT_THROW(e.generate(r), Error);
  EXPECT_THROW(Engine({test::test_model({}), 0, 1 << 20}), Error);  // context beyond max positions
}
