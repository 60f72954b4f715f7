// shardlm generate: one prompt (streamed as it is made) or a file of requests run together.
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/size_option.h"
#include "core/error.h"
#include "core/process_stats.h"
#include "formats/json_error.h"
#include "runtime/cluster.h"

namespace shardlm::cli {

namespace {

struct GenerateFlags {
  ClusterOptions cluster;
  std::string stage_weights;
  std::string kv_memory;
  GenerateRequest request;
  std::string prompt_file, prompts_file;
  bool json = false;
  bool ignore_eos = false;
  double timeout_s = 60;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<double> parse_weights(const std::string& text) {
  std::vector<double> w;
  std::string s = text;
  for (char& c : s)
    if (c == ',') c = ' ';
  std::istringstream in(s);
  for (std::string word; in >> word;) {
    try {
      w.push_back(std::stod(word));
    } catch (const std::exception&) {
      fail("--stage-weights: '{}' is not a number", word);
    }
  }
  return w;
}

// One JSON object per line: {"prompt": "..."} or {"prompt_ids": [...]}, optionally "max_tokens",
// "temperature", "top_p", "seed", "arrival_step"; what a line leaves out comes from the flags.
std::vector<GenerateRequest> read_requests(const std::string& path, const GenerateRequest& defaults) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path);
  std::vector<GenerateRequest> requests;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail("{}:{}: not JSON: {}", path, number, json_error_text(e));
    }
    if (!j.is_object()) fail("{}:{}: expected a JSON object", path, number);
    GenerateRequest r = defaults;
    try {
      if (j.contains("prompt")) r.prompt = j.at("prompt").get<std::string>();
      if (j.contains("prompt_ids")) r.prompt_ids = j.at("prompt_ids").get<std::vector<int32_t>>();
      r.max_new_tokens = j.value("max_tokens", r.max_new_tokens);
      r.sampler.temperature = j.value("temperature", r.sampler.temperature);
      r.sampler.top_p = j.value("top_p", r.sampler.top_p);
      r.sampler.seed = j.value("seed", r.sampler.seed);
      r.arrival_step = j.value("arrival_step", r.arrival_step);
    } catch (const nlohmann::json::exception& e) {
      fail("{}:{}: {}", path, number, json_error_text(e));
    }
    if (r.prompt.empty() && r.prompt_ids.empty()) fail("{}:{}: no \"prompt\" or \"prompt_ids\"", path, number);
    if (!(r.sampler.temperature >= 0) || !(r.sampler.top_p > 0 && r.sampler.top_p <= 1))
      fail("{}:{}: temperature must be >= 0 and top_p in (0, 1]", path, number);
    requests.push_back(std::move(r));
  }
  if (requests.empty()) fail("{}: no requests", path);
  return requests;
}

nlohmann::json result_json(const GenerateResult& r) {
  nlohmann::json j = {{"prompt_ids", r.prompt_ids}, {"token_ids", r.output_ids}, {"text", r.text},
                      {"queue_s", r.queue_s},       {"prefill_s", r.prefill_s},  {"decode_s", r.decode_s},
                      {"prefill_tok_s", r.prefill_tok_s()}, {"decode_tok_s", r.decode_tok_s()}};
  if (!r.error.empty()) j["error"] = r.error;
  return j;
}

void print_json(const nlohmann::json& j) {
  // Generated text can hold invalid UTF-8 (a token may end mid-character): replace, don't fail.
  fmt::print("{}\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void run_generate(GenerateFlags& f) {
  f.request.stop_at_eos = !f.ignore_eos;
  f.cluster.stage_weights = parse_weights(f.stage_weights);
  f.cluster.timeout = std::chrono::milliseconds(int64_t(f.timeout_s * 1000));
  f.cluster.kv_memory = f.kv_memory.empty() ? 0 : parse_size(f.kv_memory, "--kv-memory");
  std::vector<GenerateRequest> requests;
  if (!f.prompts_file.empty()) {
    requests = read_requests(f.prompts_file, f.request);
  } else {
    if (!f.prompt_file.empty()) f.request.prompt = read_file(f.prompt_file);
    requests.push_back(f.request);
  }
  Cluster cluster(f.cluster);
  if (!cluster.is_driver()) return;  // an mpirun rank other than 0: its part is done
  const bool one = requests.size() == 1;
  // One request streams its text as it is made; many print each when it is done.
  auto stream = [&](size_t, int32_t, const std::string& bytes) {
    if (f.json || !one) return;
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
  };
  std::vector<GenerateResult> results = cluster.run(requests, stream);
  const SchedulerStats& stats = cluster.last_run();
  if (!f.json) {
    if (one) {
      const GenerateResult& r = results[0];
      if (!r.error.empty()) fail("{}", r.error);
      std::fputc('\n', stdout);
      fmt::print(stderr, "prompt {} tokens at {:.1f} tok/s, generated {} tokens at {:.1f} tok/s\n", r.prompt_ids.size(),
                 r.prefill_tok_s(), r.output_ids.size(), r.decode_tok_s());
      return;
    }
    int failed = 0;
    for (size_t i = 0; i < results.size(); ++i) {
      const GenerateResult& r = results[i];
      if (!r.error.empty()) {
        fmt::print("--- request {}: error: {}\n", i, r.error);
        ++failed;
        continue;
      }
      fmt::print("--- request {} ({} prompt tokens, {} generated, first token after {:.3f} s)\n", i, r.prompt_ids.size(),
                 r.output_ids.size(), r.queue_s + r.prefill_s);
      std::fwrite(r.text.data(), 1, r.text.size(), stdout);
      std::fputc('\n', stdout);
    }
    fmt::print(stderr, "{} requests ({} failed): {} tokens generated in {:.2f} s = {:.1f} tok/s aggregate, {} steps\n",
               results.size(), failed, stats.generated_tokens, stats.seconds, stats.generated_tok_s(), stats.steps);
    if (failed) fail("{} of {} requests failed", failed, results.size());
    return;
  }
  nlohmann::json j = one ? result_json(results[0]) : nlohmann::json::object();
  if (one && !results[0].error.empty()) fail("{}", results[0].error);
  if (!one) {
    j["requests"] = nlohmann::json::array();
    for (const auto& r : results) j["requests"].push_back(result_json(r));
  }
  j["aggregate"] = {{"requests", results.size()},
                    {"generated_tokens", stats.generated_tokens},
                    {"prompt_tokens", stats.prompt_tokens},
                    {"seconds", stats.seconds},
                    {"generated_tok_s", stats.generated_tok_s()},
                    {"steps", stats.steps},
                    {"max_step_tokens", stats.max_step_tokens},
                    {"max_batch", f.cluster.max_batch},
                    {"device", f.cluster.device},
                    {"prefill_chunk", f.cluster.prefill_chunk}};
  j["load_s"] = cluster.load_s();
  j["peak_rss_bytes"] = peak_rss_bytes();
  j["pp"] = f.cluster.pp;
  j["tp"] = f.cluster.tp;
  if (f.cluster.pp * f.cluster.tp > 1 || f.cluster.backend == "mpi") {
    j["backend"] = cluster.backend_name();
    j["ranks"] = cluster.rank_reports();
  } else {
    j["threads"] = cluster.rank0().threads();
    nlohmann::json rank = cluster.rank_reports()[0];
    j["longest_step_s"] = rank["longest_step_s"];
  }
  print_json(j);
}

}  // namespace

void add_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate text from a prompt (streamed) or from a file of requests (batched)");
  auto f = std::make_shared<GenerateFlags>();
  cmd->add_option("-m,--model", f->cluster.model_path, "Hugging Face model folder or .gguf file")->required();
  auto* prompt = cmd->add_option("-p,--prompt", f->request.prompt, "Prompt text");
  auto* prompt_file = cmd->add_option("--prompt-file", f->prompt_file, "Read the prompt from this file");
  auto* prompts_file = cmd->add_option("--prompts-file", f->prompts_file,
                                       "JSON lines, one request each: {\"prompt\": ..., \"max_tokens\": ..., "
                                       "\"temperature\": ..., \"top_p\": ..., \"seed\": ...}; run together");
  prompt->excludes(prompt_file)->excludes(prompts_file);
  prompt_file->excludes(prompts_file);
  cmd->add_option("-n,--max-tokens", f->request.max_new_tokens, "Tokens to generate (per request)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--temperature", f->request.sampler.temperature, "Sampling temperature (0: greedy)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--top-p", f->request.sampler.top_p, "Nucleus sampling threshold")->check(CLI::Range(0.0f, 1.0f))->capture_default_str();
  cmd->add_option("--seed", f->request.sampler.seed, "Sampling seed")->capture_default_str();
  cmd->add_option("-t,--threads", f->cluster.threads_per_rank, "Threads per rank (0: the host's cores shared by its ranks)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--context", f->cluster.context, "Positions per sequence (0: min(max_position_embeddings, 4096))")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-batch", f->cluster.max_batch, "Sequences decoding together (continuous batching)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--prefill-chunk", f->cluster.prefill_chunk, "Prompt tokens per step (0: whole prompts)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--device", f->cluster.device, "Where the layers run: cpu, or cuda (rank r on GPU r % GPUs)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--kv-memory", f->kv_memory, "KV cache per rank, e.g. 512M or 4G (default: max-batch x context positions)");
  cmd->add_flag("--ignore-eos", f->ignore_eos, "Keep generating past end-of-sequence tokens");
  cmd->add_option("--pp", f->cluster.pp, "Pipeline-parallel stages (ranks holding ranges of layers)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--tp", f->cluster.tp, "Tensor-parallel ranks per stage (each holds a slice of every layer)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--backend", f->cluster.backend, "Link between ranks: shm (one host), tcp, or mpi (under mpirun)")
      ->check(CLI::IsMember({"shm", "tcp", "mpi"}))
      ->capture_default_str();
  cmd->add_option("--topology", f->cluster.topology, "tcp: ring (neighbours) or mesh (every pair)")
      ->check(CLI::IsMember({"ring", "mesh"}))
      ->capture_default_str();
  cmd->add_option("--stage-weights", f->stage_weights, "Relative capacity of each pipeline stage, e.g. 1,1,2");
  cmd->add_option("--hosts", f->cluster.hosts_file, "JSON list of host:port of `shardlm worker`s, one per rank");
  cmd->add_option("--secret", f->cluster.secret, "Cluster secret for tcp (workers refuse others)");
  cmd->add_option("--comm-timeout", f->timeout_s, "Seconds any rank waits for another before failing")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_flag("--json", f->json, "Print one JSON object (ids, text, timings, per-rank figures) instead of text");
  cmd->callback([=] {
    if (f->request.prompt.empty() && f->prompt_file.empty() && f->prompts_file.empty())
      fail("generate: give --prompt, --prompt-file or --prompts-file");
    run_generate(*f);
  });
}

}  // namespace shardlm::cli
