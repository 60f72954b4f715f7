// shardlm bench: decode and prefill figures of one split (one rank, PP, TP or both), each printed
// beside the ceiling it should approach. Decode is bound by memory bandwidth (every weight is
// read once per token, by whichever rank holds it; on one host all ranks share that bandwidth);
// prefill by the FMA units. `--comm` measures the links instead (bench_comm.cpp).
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/bench_common.h"
#include "cli/commands.h"
#include "cli/gpu_ceilings.h"
#include "cli/token_cost.h"
#include "core/cpu_features.h"
#include "core/error.h"
#include "core/log.h"
#include "core/process_stats.h"
#include "kernels/cpu/machine_ceiling.h"
#include "runtime/cluster.h"

namespace shardlm::cli {

namespace {

struct BenchFlags {
  ClusterOptions cluster;
  bool single = false;
  int64_t prompt_tokens = 512;
  int64_t decode_tokens = 32;
  int batch = 1;  // concurrent requests: aggregate decode of a batch
  int repeats = 3;
  bool json = false;
};

struct Timing {
  double prefill_s;   // one request: its prefill; a batch: until every request has its first token
  double decode_s;    // one request: its decode; a batch: the whole run
  int64_t generated;  // tokens generated in all
  double step_bytes_s = 0;
};

// Warm-up + repeats of `batch` requests (random prompts, then decode), medians of the timings.
std::vector<Timing> timed_runs(const BenchFlags& f, Cluster& cluster) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> id(0, int32_t(std::min<int64_t>(cluster.config().vocab_size, 150000) - 1));
  std::vector<GenerateRequest> reqs(size_t(f.batch));
  for (auto& req : reqs) {
    req.prompt_ids.resize(size_t(f.prompt_tokens));
    for (auto& t : req.prompt_ids) t = id(rng);
    req.max_new_tokens = f.decode_tokens + 1;  // the first new token comes with the prefill
    req.stop_at_eos = false;
    req.want_first_logits = false;
  }
  std::vector<Timing> timings;
  for (int rep = 0; rep <= f.repeats; ++rep) {  // rep 0 warms up
    Stopwatch clock;
    std::vector<GenerateResult> results = cluster.run(reqs);
    const double wall = clock.seconds();
    Timing t{0, 0, 0};
    for (const auto& r : results) {
      if (!r.error.empty()) fail("bench: {}", r.error);
      t.prefill_s = std::max(t.prefill_s, r.queue_s + r.prefill_s);
      t.generated += int64_t(r.output_ids.size());
    }
    t.decode_s = f.batch == 1 ? results[0].decode_s : wall;
    if (rep > 0) timings.push_back(t);
    log_info("bench: repeat {}/{}: prefill {:.2f} s, {} {:.2f} s{}", rep, f.repeats, t.prefill_s,
             f.batch == 1 ? "decode" : "all", t.decode_s, rep ? "" : " (warm-up)");
  }
  return timings;
}

void run_bench(BenchFlags& f) {
  if (f.cluster.model_path.empty()) fail("bench: give --model (or --comm to measure the links)");
  const bool split = f.cluster.pp * f.cluster.tp > 1 || f.cluster.backend == "mpi";
  if (!f.single && !split) fail("bench: give --single (one rank), --pp/--tp for a split, or --comm");
  const bool gpu = f.cluster.device == "cuda";
  ThreadPool probe_pool(split || f.cluster.threads_per_rank == 0 ? ThreadPool::default_threads()
                                                                 : f.cluster.threads_per_rank);
  double read_bw = 0, copy_bw = 0, fma_peak = 0, floor_s = 0;
  if (!gpu) {  // a GPU's ceiling is measured after the run: this process forks its ranks first
    log_info("bench: measuring the machine (read bandwidth, FMA peak) on {} threads", probe_pool.size());
    read_bw = measure_read_bandwidth(probe_pool);
    fma_peak = measure_fma_peak(probe_pool);
    reset_peak_rss();  // the bandwidth probe's buffer is gone; measure the model from here
  }

  auto files = open_model_files(f.cluster.model_path);
  const ModelConfig cfg = files->config();
  const TokenCost cost = token_cost(*files);
  files.reset();
  f.cluster.context = f.prompt_tokens + f.decode_tokens + 2;
  f.cluster.max_batch = f.batch;
  Cluster cluster(f.cluster);
  if (!cluster.is_driver()) return;
  std::vector<Timing> timings = timed_runs(f, cluster);
  nlohmann::json ranks = cluster.rank_reports();
  std::string device_name = "cpu";
  if (gpu) {
    const GpuCeilings c = measure_gpu_ceilings();
    read_bw = c.read_bw, copy_bw = c.copy_bw, fma_peak = c.bf16_flops, device_name = c.name;
    // One GPU at batch 1: also the floor of an engine that reads each matrix with a kernel of its own.
    if (!split && f.batch == 1) floor_s = gpu_decode_floor_seconds(cost.products);
  }
  const std::string layout =
      split ? fmt::format("pp {} x tp {} over {}", f.cluster.pp, f.cluster.tp, cluster.backend_name())
            : fmt::format("1 rank, {} threads", cluster.rank0().threads());
  auto med = [&](auto field) {
    std::vector<double> v;
    for (const auto& t : timings) v.push_back(field(t));
    return median(v);
  };
  const double prefill_s = med([](const Timing& t) { return t.prefill_s; });
  const double decode_s = med([](const Timing& t) { return t.decode_s; });
  const double generated = med([](const Timing& t) { return double(t.generated); });

  const double P = double(f.prompt_tokens) * f.batch;
  // Attention multiply-adds of a causal prefill: each of P queries reads its prefix twice (QK, PV).
  const double per_prompt = double(f.prompt_tokens);
  const double attn_flops = f.batch * 2.0 * 2.0 * double(cfg.num_layers) * double(cfg.num_heads * cfg.head_dim) *
                            per_prompt * (per_prompt + 1) / 2;
  const double prefill_flops = 2.0 * double(cost.layer_params) * P + 2.0 * double(cost.head_params) * f.batch + attn_flops;
  const double prefill_tok_s = P / prefill_s;
  const double prefill_flop_s = prefill_flops / prefill_s;
  // One request: decode tokens after the first, over its decode time. A batch: every generated
  // token over the whole run (prompts included), the aggregate a server would see.
  const double decode_tok_s = f.batch == 1 ? double(f.decode_tokens) / decode_s : generated / decode_s;
  const double bytes_per_token = double(cost.bytes_per_token());
  // Each step reads every weight once for the whole batch.
  const double steps_s = f.batch == 1 ? decode_tok_s : double(cluster.last_run().steps) / cluster.last_run().seconds;
  const double decode_bw = bytes_per_token * steps_s;
  double comm_share = 0, longest_step = 0;
  int64_t largest_rss = 0, largest_device = 0;
  for (const auto& r : ranks) {
    largest_device = std::max(largest_device, r["device_bytes"].get<int64_t>());
    comm_share = std::max(comm_share, r["comm_share"].get<double>());
    longest_step = std::max(longest_step, r["longest_step_s"].get<double>());
    largest_rss = std::max(largest_rss, r["peak_rss_bytes"].get<int64_t>());
  }

  nlohmann::json j = {{"model", f.cluster.model_path},
                      {"layout", layout},
                      {"pp", f.cluster.pp},
                      {"tp", f.cluster.tp},
                      {"batch", f.batch},
                      {"prefill_chunk", f.cluster.prefill_chunk},
                      {"simd", simd_level_name(simd_level())},
                      {"device", device_name},
                      {"device_bytes", largest_device},
                      {"weight_dtype", cost.dtype},
                      {"load_s", cluster.load_s()},
                      {"peak_rss_bytes", largest_rss},
                      {"read_bandwidth_bytes_s", read_bw},
                      {"copy_bandwidth_bytes_s", copy_bw > 0 ? nlohmann::json(copy_bw) : nlohmann::json(nullptr)},
                      {"fma_peak_flop_s", fma_peak},
                      {"prompt_tokens", f.prompt_tokens},
                      {"prefill_tok_s", prefill_tok_s},
                      {"prefill_flop_s", prefill_flop_s},
                      {"prefill_fraction_of_fma_peak", fma_peak > 0 ? nlohmann::json(prefill_flop_s / fma_peak) : nlohmann::json(nullptr)},
                      {"decode_tokens", f.decode_tokens},
                      {"decode_tok_s", decode_tok_s},
                      {"decode_bytes_per_token", bytes_per_token},
                      {"decode_bytes_s", decode_bw},
                      {"decode_fraction_of_read_bandwidth", decode_bw / read_bw},
                      {"decode_fraction_of_copy_bandwidth", copy_bw > 0 ? nlohmann::json(decode_bw / copy_bw) : nlohmann::json(nullptr)},
                      {"decode_floor_tok_s", floor_s > 0 ? nlohmann::json(1 / floor_s) : nlohmann::json(nullptr)},
                      {"comm_share", comm_share},
                      {"longest_step_s", longest_step},
                      {"repeats", f.repeats}};
  if (split) j["ranks"] = ranks;
  if (f.json) {
    fmt::print("{}\n", j.dump());
    return;
  }
  fmt::print("model            {} ({}, {}, {})\n", f.cluster.model_path, cost.dtype, layout, simd_level_name(simd_level()));
  fmt::print("load             {:.2f} s, largest peak RSS of a rank {:.2f} GB\n", cluster.load_s(), largest_rss / 1e9);
  if (gpu)
    fmt::print("ceilings         {} read bandwidth {:.1f} GB/s, copy bandwidth {:.1f} GB/s (read + written), bf16 "
               "matrix products {:.1f} TFLOP/s (measured after the run); largest GPU memory of a rank {:.2f} GB\n",
               device_name, read_bw / 1e9, copy_bw / 1e9, fma_peak / 1e12, largest_device / 1e9);
  else
    fmt::print("ceilings         read bandwidth {:.1f} GB/s, f32 FMA peak {:.1f} GFLOP/s (whole machine)\n", read_bw / 1e9,
               fma_peak / 1e9);
  // A GPU's decode also against its copy bandwidth (issue 6's ceiling; bandwidth tools report it).
  const std::string of_copy = copy_bw > 0 ? fmt::format(", {:.0f}% of copy bandwidth", 100 * decode_bw / copy_bw) : "";
  if (f.batch == 1)
    fmt::print("decode           {:.2f} tok/s = {:.1f} GB/s of weights = {:.0f}% of read bandwidth{} (median of {})\n",
               decode_tok_s, decode_bw / 1e9, 100 * decode_bw / read_bw, of_copy, f.repeats);
  if (floor_s > 0)
    fmt::print("decode floor     {:.2f} tok/s: the step's {} matrices each read by a kernel of its own, back to back "
               "({:.0f}% of read bandwidth); decode at {:.0f}% of it\n",
               1 / floor_s, cost.products.size(), 100 * bytes_per_token / floor_s / read_bw, 100 * decode_tok_s * floor_s);
  if (f.batch != 1)
    fmt::print("decode, batch {}  {:.2f} tok/s aggregate; {:.1f} steps/s stream {:.1f} GB/s of weights = {:.0f}% of read "
               "bandwidth{} (median of {})\n",
               f.batch, decode_tok_s, steps_s, decode_bw / 1e9, 100 * decode_bw / read_bw, of_copy, f.repeats);
  if (fma_peak > 0)
    fmt::print("prefill ({} tok) {:.1f} tok/s = {:.1f} GFLOP/s = {:.0f}% of {} (chunk {}, longest step {:.3f} s)\n",
               f.prompt_tokens, prefill_tok_s, prefill_flop_s / 1e9, 100 * prefill_flop_s / fma_peak,
               gpu ? "bf16 matrix-product FLOP/s" : "FMA peak", f.cluster.prefill_chunk, longest_step);
  else
    fmt::print("prefill ({} tok) {:.1f} tok/s = {:.1f} GFLOP/s (chunk {}, longest step {:.3f} s)\n", f.prompt_tokens,
               prefill_tok_s, prefill_flop_s / 1e9, f.cluster.prefill_chunk, longest_step);
  if (split) {
    for (const auto& r : ranks)
      fmt::print("rank {}          stage {} tp {}: load {:.2f} s, peak RSS {:.2f} GB, {:.0f}% of step time in communication\n",
                 r["rank"].get<int>(), r["stage"].get<int>(), r["tp_rank"].get<int>(), r["load_s"].get<double>(),
                 r["peak_rss_bytes"].get<int64_t>() / 1e9, 100 * r["comm_share"].get<double>());
  }
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Measure decode and prefill speed (or the links) against the machine's own ceilings");
  auto f = std::make_shared<BenchFlags>();
  auto comm = std::make_shared<CommBenchFlags>();
  auto comm_mode = std::make_shared<bool>(false);
  auto sweep = std::make_shared<BenchSweepFlags>();
  cmd->add_option("-m,--model", f->cluster.model_path, "Hugging Face model folder or .gguf file");
  cmd->add_flag("--single", f->single, "Run the model on one rank (this process)");
  cmd->add_option("--pp", f->cluster.pp, "Pipeline-parallel stages")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--tp", f->cluster.tp, "Tensor-parallel ranks per stage")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--prompt-tokens", f->prompt_tokens, "Prompt length for the prefill figure")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--decode-tokens", f->decode_tokens, "Tokens per decode measurement")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--repeats", f->repeats, "Timed repeats (after one warm-up); medians are reported")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--batch", f->batch, "Requests run together (aggregate decode of a batch)")->check(CLI::Range(1, 4096))->capture_default_str();
  cmd->add_option("--prefill-chunk", f->cluster.prefill_chunk, "Prompt tokens per step (0: whole prompts)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("-t,--threads", f->cluster.threads_per_rank, "Threads (per rank; 0: the cores shared by the ranks)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_flag("--json", f->json, "Print one JSON object");
  cmd->add_option("--device", f->cluster.device, "Where the layers run: cpu, or cuda (the ceilings are then GPU 0's read and copy bandwidth)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_flag("--comm", *comm_mode, "Measure all_reduce latency between ranks (16 KB and 1 MB) instead of a model");
  cmd->add_option("--backend", comm->backend, "Link between ranks: shm, tcp or mpi (mpi: run under mpirun)")
      ->check(CLI::IsMember({"shm", "tcp", "mpi"}))
      ->capture_default_str();
  cmd->add_option("--topology", comm->topology, "tcp: ring or mesh")->check(CLI::IsMember({"ring", "mesh"}))->capture_default_str();
  cmd->add_option("--ranks", comm->ranks, "--comm: ranks started on this host")->check(CLI::Range(2, 64))->capture_default_str();
  cmd->add_option("--iters", comm->iters, "--comm: timed all_reduces per size")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--sweep", sweep->spec,
                  "Run a grid: \"split=1,pp2,tp2,pp2xtp2;backend=shm,tcp-ring,tcp-mesh;prompt=128,4096;gen=32;batch=1,16;chunk=256\"");
  cmd->add_option("--out", sweep->out, "--sweep: folder for results.jsonl and results.csv (default bench-results/<time>)");
  cmd->add_option("--warmup", sweep->warmup, "--sweep: untimed runs per point")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--emulate-link", sweep->link,
                  "--sweep over an emulated link: presets 1gbe, 10gbe, 25gbe, 100gbe, tb5, or \"bw=10gbit,delay=50us\" "
                  "(ranks in network namespaces shaped with tc; needs root)");
  auto plot = std::make_shared<std::string>();
  cmd->add_option("--plot", *plot, "Draw a sweep's results.jsonl as PNG and SVG charts into --out");
  cmd->callback([=] {
    if (!plot->empty()) {
      run_plot(*plot, sweep->out.empty() ? std::filesystem::path(*plot).parent_path().string() + "/plots" : sweep->out);
      return;
    }
    if (!sweep->spec.empty()) {
      sweep->model = f->cluster.model_path;
      sweep->repeats = f->repeats;
      sweep->threads = f->cluster.threads_per_rank;
      sweep->device = f->cluster.device;
      run_sweep(*sweep);
      return;
    }
    if (*comm_mode) {
      comm->json = f->json;
      run_comm_bench(*comm);
      return;
    }
    f->cluster.backend = comm->backend;
    f->cluster.topology = comm->topology;
    run_bench(*f);
  });
}

}  // namespace shardlm::cli
