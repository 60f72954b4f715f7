// The shardlm binary as a user runs it: help, outputs, and one clear error line for bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_models.h"
#include "test_paths.h"

using namespace shardlm;
namespace fs = std::filesystem;

namespace {

struct CommandResult {
  int status;
  std::string out, err;
};
CommandResult shardlm_run(const std::string& args) {
  CommandResult r;
  r.status = test::run_command(test::shardlm_binary() + " " + args, &r.out, &r.err);
  return r;
}

// The same with `input` on its standard input (a file: popen's shell has no here-strings).
CommandResult shardlm_run_with_input(const std::string& input, const std::string& args) {
  const std::string path = test::scratch_dir("stdin") + "/input";
  std::ofstream(path) << input;
  return shardlm_run(args + " < " + path);
}

// Exit status 1, and stderr ends with exactly one error line that contains `needle` (progress
// lines may come before it).
void expect_one_error_line(const CommandResult& r, const std::string& needle) {
  EXPECT_EQ(r.status, 1) << r.err;
  size_t at = r.err.find("shardlm: error: ");
  ASSERT_NE(at, std::string::npos) << r.err;
  EXPECT_TRUE(at == 0 || r.err[at - 1] == '\n') << r.err;
  std::string line = r.err.substr(at);
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << r.err;
  EXPECT_EQ(line.back(), '\n') << r.err;
  EXPECT_NE(line.find(needle), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("shardlm: error", at + 1), std::string::npos) << "more than one error: " << r.err;
}

std::string copy_of_tiny(const std::string& name) {
  std::string src = test::test_model({});
  std::string dst = test::scratch_dir(name);
  fs::copy(src, dst, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  return dst;
}

void replace_in_file(const std::string& path, const std::string& from, const std::string& to) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  auto at = text.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  text.replace(at, from.size(), to);
  std::ofstream(path) << text;
}

}  // namespace

TEST(Cli, HelpListsEverySubcommand) {
  CommandResult r = shardlm_run("--help");
  EXPECT_EQ(r.status, 0);
  for (const char* sub : {"make-model", "tokenize", "generate", "bench", "inspect", "convert"}) {
    EXPECT_NE(r.out.find(sub), std::string::npos) << sub;
    CommandResult h = shardlm_run(std::string(sub) + " --help");
    EXPECT_EQ(h.status, 0) << sub;
    EXPECT_NE(h.out.find("--"), std::string::npos) << sub;
  }
}

// `shardlm rank` is started by shardlm itself (GPU runs' local ranks, by exec); it stays out of
// the help's list, and a job that is not one of shardlm's is one clear error, never a crash.
TEST(Cli, RankJobsThatAreNotShardlmsAreOneClearError) {
  EXPECT_EQ(shardlm_run("--help").out.find("Serve one local rank"), std::string::npos);
  expect_one_error_line(shardlm_run("rank --job-fd 0 < /dev/null"), "malformed rank job: not JSON");
  expect_one_error_line(shardlm_run_with_input("{\"backend\": \"shm\"}", "rank --job-fd 0"),
                        "malformed job from the starting process: 'log_level' is missing");
  expect_one_error_line(shardlm_run_with_input("{\"log_level\": \"loud\"}", "rank --job-fd 0"),
                        "'log_level' has the wrong type");
  const std::string job =
      R"({"backend": "shm", "topology": "ring", "rank": 0, "size": 1, "shm_name": "", "endpoints": [], )"
      R"("listen_fd": -1, "secret": "", "timeout_ms": 1000, "model": "m", "pp": 1, "tp": 1, "stage_weights": [], )"
      R"("threads": 1, "context": 64, "max_sequences": 1, "kv_memory": 0, "device": "cpu", "log_level": 1})";
  expect_one_error_line(shardlm_run_with_input(job, "rank --job-fd 0"), "malformed rank job: rank 0 of 1");
  auto with = [&](const std::string& from, const std::string& to) {
    std::string j = job;
    j.replace(j.find(from), from.size(), to);
    return j;
  };
  expect_one_error_line(shardlm_run_with_input(with("\"threads\": 1", "\"threads\": 100000"), "rank --job-fd 0"),
                        "malformed job from the starting process: 100000 threads a rank");
  expect_one_error_line(shardlm_run_with_input(with("\"context\": 64", "\"context\": -1"), "rank --job-fd 0"),
                        "a context of -1 positions");
  expect_one_error_line(shardlm_run_with_input(with("\"kv_memory\": 0", "\"kv_memory\": -7"), "rank --job-fd 0"),
                        "a KV cache budget of -7 bytes");
  expect_one_error_line(shardlm_run_with_input(with("\"tp\": 1", "\"tp\": 70000"), "rank --job-fd 0"),
                        "malformed job from the starting process: --pp 1 --tp 70000");
  expect_one_error_line(shardlm_run("rank --job-fd 9"), "cannot read the rank job from descriptor 9");
}

TEST(Cli, TokenizePrintsIdsAndDecodesThemBack) {
  std::string tok = test::qwen3_tokenizer_dir();
  CommandResult r = shardlm_run("tokenize --tokenizer " + tok + " --text 'Hello world'");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "9707 1879\n");  // Qwen tokenizer: "Hello", " world"
  CommandResult d = shardlm_run("tokenize --tokenizer " + tok + " --decode 9707,1879");
  EXPECT_EQ(d.out, "Hello world\n");
  expect_one_error_line(shardlm_run("tokenize --tokenizer " + tok + " --decode 12x"), "'12x' is not a token id");
}

TEST(Cli, GenerateJsonHasIdsTextAndFigures) {
  std::string model = test::test_model({});
  CommandResult r = shardlm_run("generate -q --model " + model + " --prompt 'The capital of France is' -n 8 --ignore-eos --json");
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["token_ids"].size(), 8u);
  EXPECT_EQ(j["prompt_ids"].size(), 5u);
  for (const char* key : {"text", "load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_bytes"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_GT(j["peak_rss_bytes"].get<int64_t>(), 0);
  EXPECT_GT(j["decode_tok_s"].get<double>(), 0);
  // Greedy decoding is deterministic, and the streamed text is the JSON text.
  CommandResult again = shardlm_run("generate -q --model " + model + " --prompt 'The capital of France is' -n 8 --ignore-eos");
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_EQ(again.out, j["text"].get<std::string>() + "\n");
}

TEST(Cli, MissingModelIsOneClearError) {
  expect_one_error_line(shardlm_run("generate --model /nonexistent/model --prompt hi"), "/nonexistent/model: no such file");
  expect_one_error_line(shardlm_run("inspect --model " + test::source_dir() + "/README.md"),
                        "expected a Hugging Face model folder or a .gguf file");
}

TEST(Cli, TruncatedSafetensorsNamesTheFile) {
  std::string dir = copy_of_tiny("cli_truncated");
  fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") / 2);
  expect_one_error_line(shardlm_run("generate --model " + dir + " --prompt hi"), "model.safetensors");
}

TEST(Cli, CorruptSafetensorsHeaderNamesTheFile) {
  std::string dir = copy_of_tiny("cli_corrupt");
  {
    std::fstream f(dir + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(9);
    f.write("\x01\x02garbage", 9);
  }
  expect_one_error_line(shardlm_run("inspect --model " + dir), "corrupt safetensors header");
}

TEST(Cli, ShapeDisagreeingWithConfigNamesTheTensor) {
  std::string dir = copy_of_tiny("cli_shape");
  replace_in_file(dir + "/config.json", "\"intermediate_size\": 768", "\"intermediate_size\": 1024");
  expect_one_error_line(shardlm_run("generate --model " + dir + " --prompt hi"),
                        "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [768, 256] but config.json implies [1024, 256]");
}

TEST(Cli, UnknownArchitectureIsRefused) {
  std::string dir = copy_of_tiny("cli_arch");
  replace_in_file(dir + "/config.json", "\"model_type\": \"llama\"", "\"model_type\": \"mamba\"");
  expect_one_error_line(shardlm_run("generate --model " + dir + " --prompt hi"), "model_type 'mamba' is not supported");
}

TEST(Cli, PromptLongerThanContextIsRefused) {
  std::string model = test::test_model({});
  std::string prompt_file = test::scratch_dir("cli_long") + "/prompt.txt";
  std::string words;
  for (int i = 0; i < 200; ++i) words += " word" + std::to_string(i);
  std::ofstream(prompt_file) << words;
  expect_one_error_line(shardlm_run("generate --model " + model + " --prompt-file " + prompt_file + " --context 64 -n 4"),
                        "but the context holds 64");
}

TEST(Cli, BadFlagsAreRejectedWithUsage) {
  CommandResult r = shardlm_run("generate --model x --prompt hi --temperature -1");
  EXPECT_NE(r.status, 0);
  CommandResult u = shardlm_run("make-model --preset huge --tokenizer x --out y");
  EXPECT_NE(u.status, 0);
  EXPECT_NE(u.err.find("huge"), std::string::npos) << u.err;
}

TEST(Cli, ConvertWritesAGgufThatGeneratesTheSameTokensAndTruncationIsAnError) {
  std::string model = test::test_model({});
  std::string dir = test::scratch_dir("cli_convert");
  CommandResult c = shardlm_run("convert -q --model " + model + " --out " + dir + "/m.gguf --dtype f32");
  ASSERT_EQ(c.status, 0) << c.err;
  std::string args = " --prompt 'The capital of France is' -n 8 --ignore-eos";
  CommandResult a = shardlm_run("generate -q --model " + model + args);
  CommandResult b = shardlm_run("generate -q --model " + dir + "/m.gguf" + args);
  ASSERT_EQ(b.status, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
  CommandResult i = shardlm_run("inspect --model " + dir + "/m.gguf");
  EXPECT_NE(i.out.find("GGUF"), std::string::npos) << i.out;
  fs::resize_file(dir + "/m.gguf", fs::file_size(dir + "/m.gguf") - 1000);
  expect_one_error_line(shardlm_run("generate --model " + dir + "/m.gguf --prompt hi"), "m.gguf");
}

TEST(Cli, PromptsFileRunsRequestsTogetherAndReportsEach) {
  std::string model = test::test_model({});
  std::string dir = test::scratch_dir("cli_prompts");
  {
    std::ofstream f(dir + "/requests.jsonl");
    f << R"({"prompt": "The capital of France is"})" << "\n"
      << R"({"prompt": "def add(a, b):", "max_tokens": 5})" << "\n\n"
      << R"({"prompt_ids": [9707, 1879], "max_tokens": 3, "temperature": 0.8, "seed": 7})" << "\n"
      << R"({"prompt": "too long for the context", "max_tokens": 500})" << "\n";
  }
  CommandResult r = shardlm_run("generate -q --model " + model + " --prompts-file " + dir +
                                "/requests.jsonl -n 8 --ignore-eos --max-batch 4 --context 64 --json");
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["requests"].size(), 4u);
  EXPECT_EQ(j["requests"][0]["token_ids"].size(), 8u);
  EXPECT_EQ(j["requests"][1]["token_ids"].size(), 5u);
  EXPECT_EQ(j["requests"][2]["token_ids"].size(), 3u);
  EXPECT_EQ(j["requests"][2]["prompt_ids"], nlohmann::json({9707, 1879}));
  EXPECT_NE(j["requests"][3]["error"].get<std::string>().find("context holds 64"), std::string::npos);
  EXPECT_EQ(j["aggregate"]["generated_tokens"].get<int64_t>(), 16);
  EXPECT_GT(j["aggregate"]["generated_tok_s"].get<double>(), 0);
  // The first request's tokens are those it gets alone.
  CommandResult alone = shardlm_run("generate -q --model " + model + " --prompt 'The capital of France is' -n 8 --ignore-eos --json");
  EXPECT_EQ(nlohmann::json::parse(alone.out)["token_ids"], j["requests"][0]["token_ids"]);
  // Text mode prints each request, and a failed one makes the exit status 1.
  CommandResult text = shardlm_run("generate --model " + model + " --prompts-file " + dir +
                                   "/requests.jsonl -n 8 --ignore-eos --max-batch 4 --context 64");
  EXPECT_EQ(text.status, 1);
  EXPECT_NE(text.out.find("--- request 3: error:"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("--- request 0 ("), std::string::npos) << text.out;
  // A malformed line is named.
  std::ofstream(dir + "/bad.jsonl") << "{\"prompt\": \"ok\"}\n{\"prompt\": 5}\n";
  expect_one_error_line(shardlm_run("generate --model " + model + " --prompts-file " + dir + "/bad.jsonl"), "bad.jsonl:2");
  expect_one_error_line(shardlm_run("generate --model " + model + " --prompt hi --kv-memory 12Q"), "unknown unit 'Q'");
  // A KV cache larger than the host's memory is refused before it is allocated (it was killed):
  // one rank's, or the local ranks' together, in the units the flag was given in.
  expect_one_error_line(shardlm_run("generate --model " + model + " --prompt hi --kv-memory 900000G"),
                        "this rank's KV cache needs 900000.00 GiB but the host has");
  expect_one_error_line(shardlm_run("generate --model " + model + " --prompt hi --pp 2 --kv-memory 900000G"),
                        "the 2 ranks' KV caches need 1800000.00 GiB together but the host has");
}
