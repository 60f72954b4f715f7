#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "core/process_stats.h"
#include "runtime/cluster.h"
#include "runtime/engine.h"

namespace shardlm::cli {

namespace {
struct GenerateFlags {
  EngineOptions engine;
  ClusterOptions cluster;
  std::string stage_weights;
  GenerateRequest request;
  std::string prompt_file;
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

bool distributed(const GenerateFlags& f) {
  return f.cluster.pp * f.cluster.tp > 1 || f.cluster.backend == "mpi" || !f.cluster.hosts_file.empty();
}

void run_generate(GenerateFlags& f) {
  if (!f.prompt_file.empty()) f.request.prompt = read_file(f.prompt_file);
  f.request.stop_at_eos = !f.ignore_eos;
  auto stream = [&](int32_t, const std::string& bytes) {
    if (f.json) return;
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
  };
  GenerateResult r;
  double load_s = 0;
  int threads = 0;
  nlohmann::json ranks;
  if (distributed(f)) {
    f.cluster.model_path = f.engine.model_path;
    f.cluster.context = f.engine.context;
    f.cluster.threads_per_rank = f.engine.threads;
    f.cluster.stage_weights = parse_weights(f.stage_weights);
    Cluster cluster(f.cluster);
    if (!cluster.is_driver()) return;  // an mpirun rank other than 0: its part is done
    r = cluster.generate(f.request, stream);
    load_s = cluster.load_s();
    if (f.json) ranks = cluster.rank_reports();
  } else {
    Engine engine(f.engine);
    r = engine.generate(f.request, stream);
    load_s = engine.load_s();
    threads = engine.threads();
  }
  if (!f.json) {
    std::fputc('\n', stdout);
    fmt::print(stderr, "prompt {} tokens at {:.1f} tok/s, generated {} tokens at {:.1f} tok/s\n", r.prompt_ids.size(),
               r.prefill_tok_s(), r.output_ids.size(), r.decode_tok_s());
    return;
  }
  nlohmann::json j = {{"prompt_ids", r.prompt_ids},
                      {"token_ids", r.output_ids},
                      {"text", r.text},
                      {"load_s", load_s},
                      {"prefill_s", r.prefill_s},
                      {"decode_s", r.decode_s},
                      {"prefill_tok_s", r.prefill_tok_s()},
                      {"decode_tok_s", r.decode_tok_s()},
                      {"peak_rss_bytes", peak_rss_bytes()}};
  if (ranks.is_null()) {
    j["threads"] = threads;
  } else {
    j["pp"] = f.cluster.pp;
    j["tp"] = f.cluster.tp;
    j["backend"] = f.cluster.backend == "tcp" ? "tcp-" + f.cluster.topology : f.cluster.backend;
    j["ranks"] = ranks;
  }
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
  cmd->add_option("-t,--threads", f->engine.threads, "Threads (per rank; 0: the host's cores shared by its ranks)")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--context", f->engine.context, "KV cache positions (0: min(max_position_embeddings, 4096))")
      ->check(CLI::NonNegativeNumber);
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
  cmd->add_flag("--json", f->json, "Print one JSON object (ids, text, timings, peak RSS) instead of streaming text");
  cmd->callback([=] {
    if (f->request.prompt.empty() && f->prompt_file.empty()) fail("generate: give --prompt or --prompt-file");
    f->cluster.timeout = std::chrono::milliseconds(int64_t(f->timeout_s * 1000));
    run_generate(*f);
  });
}

}  // namespace shardlm::cli
