// The engine against Hugging Face transformers: for each golden file made by
// tests/reference/model_reference.py, regenerate the same model with make-model, run the same
// prompts, and compare token ids, last-position logits and 32 greedy tokens.
//
// Logit error is measured as max_i |ours_i - ref_i| / max_i |ref_i| over the recorded indices
// (every `stride`-th vocabulary id plus the reference's top 16).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "test_models.h"
#include "test_paths.h"

using namespace shardlm;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

json load_golden(const std::string& name) {
  std::string path = test::data_dir() + "/reference/" + name + ".json";
  std::ifstream in(path);
  if (!in) {
    ADD_FAILURE() << "missing golden file " << path << " (made by tests/reference/model_reference.py)";
    return json();
  }
  return json::parse(in);
}

double relative_error(const std::vector<float>& logits, const json& prompt, int64_t stride) {
  double max_diff = 0, max_ref = 0;
  auto sampled = prompt["sampled_logits"].get<std::vector<double>>();
  for (size_t i = 0; i < sampled.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(double(logits[i * size_t(stride)]) - sampled[i]));
    max_ref = std::max(max_ref, std::fabs(sampled[i]));
  }
  auto top_ids = prompt["top_ids"].get<std::vector<int64_t>>();
  auto top_logits = prompt["top_logits"].get<std::vector<double>>();
  for (size_t i = 0; i < top_ids.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(double(logits[size_t(top_ids[i])]) - top_logits[i]));
    max_ref = std::max(max_ref, std::fabs(top_logits[i]));
  }
  return max_diff / max_ref;
}

// Checks one golden file; tolerance is the largest relative logit error allowed.
void check_against_reference(const std::string& golden_name, const std::string& model_override, double tolerance,
                             bool check_greedy) {
  json golden = load_golden(golden_name);
  if (golden.is_null()) return;
  std::string model = model_override.empty()
                          ? test::test_model(test::parse_make_model_flags(golden["make_model"].get<std::string>()))
                          : model_override;
  Engine engine({model, 0, 256});
  ASSERT_EQ(engine.config().vocab_size, golden["vocab_size"].get<int64_t>());
  const int64_t stride = golden["stride"].get<int64_t>();
  for (const json& p : golden["prompts"]) {
    const std::string text = p["text"].get<std::string>();
    auto ids = p["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(engine.tokenizer().encode(text), ids) << "tokenizer differs on: " << text;
    GenerateRequest req;
    req.prompt_ids = ids;
    req.max_new_tokens = check_greedy ? int64_t(p["greedy"].size()) : 1;
    req.stop_at_eos = false;
    GenerateResult r = engine.generate(req);
    double err = relative_error(r.first_logits, p, stride);
    EXPECT_LT(err, tolerance) << golden_name << " prompt: " << text;
    ::testing::Test::RecordProperty(golden_name + ":" + std::to_string(ids.size()), std::to_string(err));
    std::printf("%s  %3zu tokens  max relative logit error %.3g\n", golden_name.c_str(), ids.size(), err);
    if (check_greedy) {
      EXPECT_EQ(r.output_ids, p["greedy"].get<std::vector<int32_t>>()) << golden_name << ": " << text;
    }
  }
}

}  // namespace

// f32 weights, f32 math on both sides: agreement to 1e-4.
TEST(Reference, LlamaTinyF32) { check_against_reference("llama-tiny-f32", "", 1e-4, true); }
TEST(Reference, Qwen3TinyF32) { check_against_reference("qwen3-tiny-f32", "", 1e-4, true); }
TEST(Reference, LlamaSmallF32) { check_against_reference("llama-small-f32", "", 1e-4, true); }
TEST(Reference, Qwen3SmallF32) { check_against_reference("qwen3-small-f32", "", 1e-4, true); }

// bf16 weights: against transformers running the same bf16 weights in f32 (the engine's own
// arithmetic: bf16 weights, f32 activations) at 1e-4, and against transformers' native bf16 run
// at 1.5e-2. The native run rounds every activation to bf16: on these models it differs from
// transformers' own f32 run of the same weights by up to 1.43e-2 (llama-small), more than the
// engine differs from it (up to 1.03e-2), so 1e-2 would test transformers' rounding, not ours.
// Greedy tokens are not compared with the native run: its own f32 run disagrees with it.
TEST(Reference, LlamaTinyBf16) { check_against_reference("llama-tiny-bf16", "", 1e-4, true); }
TEST(Reference, Qwen3TinyBf16) { check_against_reference("qwen3-tiny-bf16", "", 1e-4, true); }
TEST(Reference, LlamaSmallBf16) { check_against_reference("llama-small-bf16", "", 1e-4, true); }
TEST(Reference, LlamaTinyBf16NativeTransformers) { check_against_reference("llama-tiny-bf16-native", "", 1.5e-2, false); }
TEST(Reference, Qwen3TinyBf16NativeTransformers) { check_against_reference("qwen3-tiny-bf16-native", "", 1.5e-2, false); }
TEST(Reference, LlamaSmallBf16NativeTransformers) { check_against_reference("llama-small-bf16-native", "", 1.5e-2, false); }
