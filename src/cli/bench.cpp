// shardlm bench --single: the one-rank figures, each printed beside the ceiling it should approach.
// Decode is bound by memory bandwidth (every weight is read once per token); prefill by the FMA units.
#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/bench_common.h"
#include "cli/commands.h"
#include "core/cpu_features.h"
#include "core/error.h"
#include "core/log.h"
#include "core/process_stats.h"
#include "kernels/cpu/machine_ceiling.h"
#include "runtime/engine.h"

namespace shardlm::cli {

namespace {

struct BenchFlags {
  EngineOptions engine;
  bool single = false;
  int64_t prompt_tokens = 512;
  int64_t decode_tokens = 32;
  int repeats = 3;
  bool json = false;
};

int64_t matrix_bytes(const WeightMatrix& m) { return m.data ? m.rows * dtype_bytes(m.dtype, m.cols) : 0; }
int64_t matrix_params(const WeightMatrix& m) { return m.data ? m.rows * m.cols : 0; }

// Bytes and multiply-adds one token costs in the layers and in the head.
struct TokenCost {
  int64_t layer_bytes = 0, head_bytes = 0, layer_params = 0, head_params = 0;
};
TokenCost token_cost(const ModelWeights& w) {
  TokenCost c;
  for (const auto& L : w.layers)
    for (const WeightMatrix* m : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) {
      c.layer_bytes += matrix_bytes(*m);
      c.layer_params += matrix_params(*m);
    }
  c.head_bytes = matrix_bytes(w.lm_head);
  c.head_params = matrix_params(w.lm_head);
  return c;
}

void run_bench(BenchFlags& f) {
  if (f.engine.model_path.empty()) fail("bench: give --model (or --comm to measure the links)");
  if (!f.single) fail("bench: give --single (one rank) or --comm; sweeps over splits come with `bench --sweep`");
  ThreadPool probe_pool(f.engine.threads > 0 ? f.engine.threads : ThreadPool::default_threads());
  log_info("bench: measuring the machine (read bandwidth, FMA peak) on {} threads", probe_pool.size());
  const double read_bw = measure_read_bandwidth(probe_pool);
  const double fma_peak = measure_fma_peak(probe_pool);

  Engine engine(f.engine);
  const ModelConfig& cfg = engine.config();
  SHARDLM_CHECK(f.prompt_tokens + f.decode_tokens + 1 <= engine.context(),
                "bench: {} prompt + {} decode tokens exceed the context of {}", f.prompt_tokens, f.decode_tokens,
                engine.context());
  const TokenCost cost = token_cost(engine.transformer().weights());
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> id(0, int32_t(std::min<int64_t>(cfg.vocab_size, 150000) - 1));
  std::vector<int32_t> prompt(size_t(f.prompt_tokens));
  for (auto& t : prompt) t = id(rng);

  std::vector<float> logits(size_t(cfg.vocab_size));
  std::vector<double> prefill_s, decode_s;
  for (int rep = 0; rep <= f.repeats; ++rep) {  // rep 0 warms up
    KvCache cache = engine.transformer().make_cache(f.prompt_tokens + f.decode_tokens + 1);
    Stopwatch clock;
    engine.transformer().forward(prompt.data(), f.prompt_tokens, 0, cache, logits.data());
    double p = clock.seconds();
    int32_t token = prompt.back();
    clock.reset();
    for (int64_t i = 0; i < f.decode_tokens; ++i)
      engine.transformer().forward(&token, 1, f.prompt_tokens + i, cache, logits.data());
    double d = clock.seconds();
    if (rep > 0) prefill_s.push_back(p), decode_s.push_back(d);
    log_info("bench: repeat {}/{}: prefill {:.2f} s, decode {:.2f} s{}", rep, f.repeats, p, d, rep ? "" : " (warm-up)");
  }
  const double P = double(f.prompt_tokens);
  // Attention multiply-adds of a causal prefill: each of P queries reads its prefix twice (QK, PV).
  const double attn_flops = 2.0 * 2.0 * double(cfg.num_layers) * double(cfg.num_heads * cfg.head_dim) * P * (P + 1) / 2;
  const double prefill_flops = 2.0 * double(cost.layer_params) * P + 2.0 * double(cost.head_params) + attn_flops;
  const double prefill_tok_s = P / median(prefill_s);
  const double prefill_flop_s = prefill_flops / median(prefill_s);
  const double decode_tok_s = double(f.decode_tokens) / median(decode_s);
  const double bytes_per_token = double(cost.layer_bytes + cost.head_bytes);
  const double decode_bw = bytes_per_token * decode_tok_s;

  nlohmann::json j = {{"model", f.engine.model_path},
                      {"threads", engine.pool().size()},
                      {"simd", simd_level_name(simd_level())},
                      {"weight_dtype", dtype_name(engine.transformer().weights().layers.at(0).q.dtype)},
                      {"load_s", engine.load_s()},
                      {"peak_rss_bytes", peak_rss_bytes()},
                      {"read_bandwidth_bytes_s", read_bw},
                      {"fma_peak_flop_s", fma_peak},
                      {"prompt_tokens", f.prompt_tokens},
                      {"prefill_tok_s", prefill_tok_s},
                      {"prefill_flop_s", prefill_flop_s},
                      {"prefill_fraction_of_fma_peak", prefill_flop_s / fma_peak},
                      {"decode_tokens", f.decode_tokens},
                      {"decode_tok_s", decode_tok_s},
                      {"decode_bytes_per_token", bytes_per_token},
                      {"decode_bytes_s", decode_bw},
                      {"decode_fraction_of_read_bandwidth", decode_bw / read_bw},
                      {"repeats", f.repeats}};
  if (f.json) {
    fmt::print("{}\n", j.dump());
    return;
  }
  fmt::print("model            {} ({}, {} threads, {})\n", f.engine.model_path, j["weight_dtype"].get<std::string>(),
             engine.pool().size(), simd_level_name(simd_level()));
  fmt::print("load             {:.2f} s, peak RSS {:.2f} GB\n", engine.load_s(), peak_rss_bytes() / 1e9);
  fmt::print("ceilings         read bandwidth {:.1f} GB/s, f32 FMA peak {:.1f} GFLOP/s\n", read_bw / 1e9, fma_peak / 1e9);
  fmt::print("decode           {:.2f} tok/s = {:.1f} GB/s of weights = {:.0f}% of read bandwidth (median of {})\n",
             decode_tok_s, decode_bw / 1e9, 100 * decode_bw / read_bw, f.repeats);
  fmt::print("prefill ({} tok) {:.1f} tok/s = {:.1f} GFLOP/s = {:.0f}% of FMA peak (median of {})\n", f.prompt_tokens,
             prefill_tok_s, prefill_flop_s / 1e9, 100 * prefill_flop_s / fma_peak, f.repeats);
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Measure decode and prefill speed against the machine's own ceilings");
  auto f = std::make_shared<BenchFlags>();
  auto comm = std::make_shared<CommBenchFlags>();
  auto comm_mode = std::make_shared<bool>(false);
  cmd->add_option("-m,--model", f->engine.model_path, "Hugging Face model folder or .gguf file");
  cmd->add_flag("--single", f->single, "Run the model on one rank (this process)");
  cmd->add_option("--prompt-tokens", f->prompt_tokens, "Prompt length for the prefill figure")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--decode-tokens", f->decode_tokens, "Tokens per decode measurement")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--repeats", f->repeats, "Timed repeats (after one warm-up); medians are reported")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("-t,--threads", f->engine.threads, "Threads (0: all cores)")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_flag("--json", f->json, "Print one JSON object");
  cmd->add_flag("--comm", *comm_mode, "Measure all_reduce latency between ranks (16 KB and 1 MB) instead of a model");
  cmd->add_option("--backend", comm->backend, "--comm: shm, tcp or mpi (mpi: run under mpirun)")
      ->check(CLI::IsMember({"shm", "tcp", "mpi"}))
      ->capture_default_str();
  cmd->add_option("--topology", comm->topology, "--comm with tcp: ring or mesh")
      ->check(CLI::IsMember({"ring", "mesh"}))
      ->capture_default_str();
  cmd->add_option("--ranks", comm->ranks, "--comm: ranks started on this host")->check(CLI::Range(2, 64))->capture_default_str();
  cmd->add_option("--iters", comm->iters, "--comm: timed all_reduces per size")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->callback([=] {
    if (*comm_mode) {
      comm->json = f->json;
      run_comm_bench(*comm);
      return;
    }
    f->engine.context = std::max<int64_t>(f->prompt_tokens + f->decode_tokens + 1, 16);
    run_bench(*f);
  });
}

}  // namespace shardlm::cli
