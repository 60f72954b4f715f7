#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "core/process_stats.h"
#include "runtime/engine.h"

namespace shardlm::cli {

namespace {
struct GenerateFlags {
  EngineOptions engine;
  GenerateRequest request;
  std::string prompt_file;
  bool json = false;
  bool ignore_eos = false;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void run_generate(GenerateFlags& f) {
  if (!f.prompt_file.empty()) f.request.prompt = read_file(f.prompt_file);
  f.request.stop_at_eos = !f.ignore_eos;
  Engine engine(f.engine);
  auto stream = [&](int32_t, const std::string& bytes) {
    if (f.json) return;
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
  };
  GenerateResult r = engine.generate(f.request, stream);
  if (!f.json) {
    std::fputc('\n', stdout);
    fmt::print(stderr, "prompt {} tokens at {:.1f} tok/s, generated {} tokens at {:.1f} tok/s\n", r.prompt_ids.size(),
               r.prefill_tok_s(), r.output_ids.size(), r.decode_tok_s());
    return;
  }
  nlohmann::json j = {{"prompt_ids", r.prompt_ids},
                      {"token_ids", r.output_ids},
                      {"text", r.text},
                      {"load_s", engine.load_s()},
                      {"prefill_s", r.prefill_s},
                      {"decode_s", r.decode_s},
                      {"prefill_tok_s", r.prefill_tok_s()},
                      {"decode_tok_s", r.decode_tok_s()},
                      {"peak_rss_bytes", peak_rss_bytes()},
                      {"threads", engine.pool().size()}};
  // Generated text can hold invalid UTF-8 (a token may end mid-character): replace, don't fail.
  fmt::print("{}\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}
}  // namespace

void add_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate text from a prompt, streaming it to stdout");
  auto f = std::make_shared<GenerateFlags>();
  cmd->add_option("-m,--model", f->engine.model_path, "Hugging Face model folder or .gguf file")->required();
  auto* prompt = cmd->add_option("-p,--prompt", f->request.prompt, "Prompt text");
  auto* prompt_file = cmd->add_option("--prompt-file", f->prompt_file, "Read the prompt from this file");
  prompt->excludes(prompt_file);
  cmd->add_option("-n,--max-tokens", f->request.max_new_tokens, "Tokens to generate")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--temperature", f->request.sampler.temperature, "Sampling temperature (0: greedy)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--top-p", f->request.sampler.top_p, "Nucleus sampling threshold")->check(CLI::Range(0.0f, 1.0f))->capture_default_str();
  cmd->add_option("--seed", f->request.sampler.seed, "Sampling seed")->capture_default_str();
  cmd->add_option("-t,--threads", f->engine.threads, "Threads (0: all cores)")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--context", f->engine.context, "KV cache positions (0: min(max_position_embeddings, 4096))")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--ignore-eos", f->ignore_eos, "Keep generating past end-of-sequence tokens");
  cmd->add_flag("--json", f->json, "Print one JSON object (ids, text, timings, peak RSS) instead of streaming text");
  cmd->callback([=] {
    if (f->request.prompt.empty() && f->prompt_file.empty()) fail("generate: give --prompt or --prompt-file");
    run_generate(*f);
  });
}

}  // namespace shardlm::cli
