// shardlm bench --sweep: runs every point of a grid (split x backend x prompt x gen x batch x
// chunk), each with warm-up and repeats, records medians and spread as JSON lines and CSV, prints
// a table as it goes, and ends with the answer: which split is fastest, and what each costs.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/bench_common.h"
#include "cli/gpu_ceilings.h"
#include "cli/sweep_spec.h"
#include "cli/token_cost.h"
#include "core/cpu_features.h"
#include "core/error.h"
#include "core/log.h"
#include "core/process_stats.h"
#include "kernels/cpu/machine_ceiling.h"
#include "runtime/cluster.h"
#include "runtime/emulated_network.h"

namespace shardlm::cli {

namespace {

using nlohmann::json;

struct Spread {
  double median = 0, min = 0, max = 0;
  json to_json() const { return {{"median", median}, {"min", min}, {"max", max}}; }
};
Spread spread(std::vector<double> v) {
  if (v.empty()) return {};
  std::sort(v.begin(), v.end());
  return {cli::median(v), v.front(), v.back()};
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5))];
}

std::string read_first_line_with(const char* path, const char* key) {
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key, 0) == 0) {
      auto colon = line.find(':');
      std::string v = colon == std::string::npos ? line : line.substr(colon + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  return "";
}

// The host, and the ceilings the points are measured against: the CPU's read bandwidth and FMA
// peak, or with --device cuda GPU 0's read and copy bandwidth and bf16 FLOP/s.
json machine_json(const std::string& device) {
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  json m = {{"hostname", host},
            {"cpu", read_first_line_with("/proc/cpuinfo", "model name")},
            {"cores", ThreadPool::default_threads()},
            {"memory_bytes", total_memory_bytes()},
            {"simd", simd_level_name(simd_level())},
            {"device", device}};
  if (device == "cuda") {
    const GpuCeilings c = measure_gpu_ceilings();
    m["gpu"] = c.name;
    m["read_bandwidth_bytes_s"] = c.read_bw;
    m["copy_bandwidth_bytes_s"] = c.copy_bw;
    m["bf16_flop_s"] = c.bf16_flops;
  } else {
    ThreadPool probe(ThreadPool::default_threads());
    m["read_bandwidth_bytes_s"] = measure_read_bandwidth(probe, size_t(256) << 20);
    m["fma_peak_flop_s"] = measure_fma_peak(probe);
  }
  return m;
}

json model_json(const std::string& path) {
  auto files = open_model_files(path);
  const ModelConfig& c = files->config();
  const TensorView* q = files->find("model.layers.0.self_attn.q_proj.weight");
  const TokenCost cost = token_cost(*files);
  return {{"path", path},
          {"description", files->description()},
          {"arch", arch_name(c.arch)},
          {"layers", c.num_layers},
          {"hidden", c.hidden_size},
          {"heads", c.num_heads},
          {"kv_heads", c.num_kv_heads},
          {"vocab", c.vocab_size},
          {"dtype", q ? std::string(dtype_name(q->dtype)) : "?"},
          {"file_bytes", files->file_bytes()},
          {"decode_bytes_per_token", cost.bytes_per_token()}};
}

// One point: a fresh cluster (so load time and memory are this split's), warm-up, repeats.
json run_point(const SweepPoint& p, const BenchSweepFlags& f, const json& model, const json& machine) {
  json r = {{"split", p.split_name()}, {"pp", p.pp}, {"tp", p.tp}, {"backend", p.backend_name()}, {"prompt_tokens", p.prompt},
            {"gen_tokens", p.gen}, {"batch", p.batch}, {"prefill_chunk", p.chunk}, {"repeats", f.repeats},
            {"warmup", f.warmup}, {"device", f.device}};
  // The ranks share this host's memory: refuse a point that cannot fit rather than be killed.
  const int64_t needed = model["file_bytes"].get<int64_t>() + (256ll << 20) * p.pp * p.tp;
  if (const int64_t available = available_memory_bytes(); needed > available) {
    r["status"] = "skipped";
    r["reason"] = fmt::format("needs about {:.1f} GB, {:.1f} GB available", needed / 1e9, available / 1e9);
    return r;
  }
  try {
    ClusterOptions o;
    o.model_path = f.model;
    o.pp = p.pp, o.tp = p.tp;
    o.backend = p.backend, o.topology = p.topology;
    o.device = f.device;
    std::unique_ptr<EmulatedNetwork> network;
    if (!f.link.empty() && p.pp * p.tp > 1) {
      // Ranks in namespaces over shaped links: only tcp crosses them.
      const LinkSpec link = parse_link(f.link);
      network = std::make_unique<EmulatedNetwork>(p.pp * p.tp, link);
      o.backend = "tcp";
      o.network = network.get();
      r["backend"] = "tcp-" + p.topology;
      r["link"] = link.name;
      r["link_delay_emulated"] = network->delay_emulated();
    }
    o.context = p.prompt + p.gen + 8;
    o.max_batch = p.batch;
    o.prefill_chunk = p.chunk;
    o.threads_per_rank = f.threads;
    o.timeout = std::chrono::milliseconds(int64_t(f.timeout_s * 1000));
    o.tokenizer = f.tokenizer;
    Cluster cluster(o);
    (void)network;  // outlives the cluster: declared before it
    r["load_s"] = cluster.load_s();
    r["plan"] = plan_to_json(cluster.plan(), cluster.config())["ranks"];

    std::mt19937 rng(uint32_t(p.prompt * 131 + p.batch));
    std::uniform_int_distribution<int32_t> id(0, int32_t(std::min<int64_t>(cluster.config().vocab_size, 150000) - 1));
    std::vector<GenerateRequest> reqs(size_t(p.batch));
    for (auto& q : reqs) {
      q.prompt_ids.resize(size_t(p.prompt));
      for (auto& t : q.prompt_ids) t = id(rng);
      q.max_new_tokens = p.gen;
      q.stop_at_eos = false;
      q.want_first_logits = false;
    }
    std::vector<double> ttft, prefill, per_seq, aggregate, itl_p50, itl_p99;
    int64_t generated = 0, requested = 0;
    for (int rep = 0; rep < f.warmup + f.repeats; ++rep) {
      Stopwatch clock;
      auto results = cluster.run(reqs);
      const double wall = clock.seconds();
      if (rep < f.warmup) continue;
      std::vector<double> firsts, gaps, seq_rates;
      int64_t tokens = 0;
      for (const auto& res : results) {
        if (!res.error.empty()) throw Error(res.error);
        firsts.push_back(res.queue_s + res.prefill_s);
        if (res.decode_tok_s() > 0) seq_rates.push_back(res.decode_tok_s());
        for (size_t i = 1; i < res.token_times.size(); ++i) gaps.push_back(res.token_times[i] - res.token_times[i - 1]);
        tokens += int64_t(res.output_ids.size());
      }
      generated += tokens;
      requested += p.gen * p.batch;
      ttft.push_back(cli::median(firsts));
      prefill.push_back(double(p.prompt * p.batch) / *std::max_element(firsts.begin(), firsts.end()));
      per_seq.push_back(cli::median(seq_rates));
      aggregate.push_back(double(tokens) / wall);
      itl_p50.push_back(percentile(gaps, 0.50));
      itl_p99.push_back(percentile(gaps, 0.99));
    }
    json ranks = cluster.rank_reports();
    double comm = 0, longest_step = 0;
    int64_t bytes = 0, largest = 0, largest_device = 0;
    json rss = json::array(), device_bytes = json::array();
    for (const auto& rank : ranks) {
      comm = std::max(comm, rank["comm_share"].get<double>());
      longest_step = std::max(longest_step, rank["longest_step_s"].get<double>());
      bytes += rank["bytes_sent"].get<int64_t>();
      largest = std::max(largest, rank["peak_rss_bytes"].get<int64_t>());
      rss.push_back(rank["peak_rss_bytes"]);
      largest_device = std::max(largest_device, rank.value("device_bytes", int64_t(0)));
      device_bytes.push_back(rank.value("device_bytes", int64_t(0)));
    }
    r["status"] = "ok";
    r["ttft_s"] = spread(ttft).to_json();
    r["prefill_tok_s"] = spread(prefill).to_json();
    r["decode_tok_s_per_seq"] = spread(per_seq).to_json();
    r["decode_tok_s_aggregate"] = spread(aggregate).to_json();
    r["itl_p50_s"] = spread(itl_p50).to_json();
    r["itl_p99_s"] = spread(itl_p99).to_json();
    r["peak_rss_bytes_per_rank"] = rss;
    r["max_peak_rss_bytes"] = largest;
    if (f.device == "cuda") {
      r["device_bytes_per_rank"] = device_bytes;
      r["max_device_bytes"] = largest_device;
      // How the ranks' GPUs exchange: peer, nccl, peer+nccl, host or none.
      r["tp_all_reduce"] = ranks.at(0).value("tp_all_reduce", "?");
      r["pp_hand_off"] = ranks.at(0).value("pp_hand_off", "?");
      // The link that carries a GPU split's data is the GPUs' own, not the host group's.
      if (p.pp * p.tp > 1) {
        std::string link = p.tp > 1 ? r["tp_all_reduce"].get<std::string>() : "";
        if (p.pp > 1) link += (link.empty() ? "" : "/") + r["pp_hand_off"].get<std::string>();
        r["backend"] = link;
      }
    }
    // A decode step reads every weight once for the whole batch, so a sequence's decode rate is the
    // steps' rate: its share of one device's read bandwidth (a split's ranks may pass 100%).
    r["seq_decode_fraction_of_read_bandwidth"] = spread(per_seq).median * model["decode_bytes_per_token"].get<double>() /
                                             machine["read_bandwidth_bytes_s"].get<double>();
    r["comm_share"] = comm;
    r["longest_step_s"] = longest_step;  // of any rank: what chunked prefill bounds
    // Every rank's sends over all runs of the point (warm-up included), per token through the model.
    const int64_t all_tokens = int64_t(f.warmup + f.repeats) * p.batch * (p.prompt + p.gen);
    r["bytes_sent_per_token"] = double(bytes) / double(all_tokens);
    r["tokens_generated"] = generated;
    r["tokens_requested"] = requested;
  } catch (const std::exception& e) {
    r["status"] = "failed";
    r["reason"] = e.what();
  }
  return r;
}

std::vector<std::string> csv_columns() {
  return {"split",         "pp",           "tp",           "backend",      "prompt_tokens", "gen_tokens",
          "batch",         "prefill_chunk", "status",      "load_s",       "ttft_s",        "prefill_tok_s",
          "decode_tok_s_per_seq", "decode_tok_s_aggregate", "itl_p50_s", "itl_p99_s", "max_peak_rss_bytes",
          "comm_share",    "longest_step_s", "bytes_sent_per_token", "tokens_generated", "tokens_requested",
          "device", "max_device_bytes", "seq_decode_fraction_of_read_bandwidth", "reason"};
}

std::string csv_field(const json& r, const std::string& key) {
  if (!r.contains(key)) return "";
  const json& v = r[key];
  if (v.is_object() && v.contains("median")) return fmt::format("{:.6g}", v["median"].get<double>());
  if (v.is_string()) {
    std::string s = v.get<std::string>();
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c == '\n' ? ' ' : c);
    return q + "\"";
  }
  if (v.is_number_float()) return fmt::format("{:.6g}", v.get<double>());
  return v.dump();
}

std::string eta(double seconds) {
  int s = int(seconds + 0.5);
  return s >= 60 ? fmt::format("{}m{:02d}s", s / 60, s % 60) : fmt::format("{}s", s);
}

void print_row(const json& r) {
  auto med = [&](const char* k) { return r.contains(k) ? r[k]["median"].get<double>() : 0.0; };
  std::string head = fmt::format("{:<8} {:<14} {:>6} {:>4} {:>5} {:>5}", r["split"].get<std::string>(),
                                 r["backend"].get<std::string>(), r["prompt_tokens"].get<int64_t>(),
                                 r["gen_tokens"].get<int64_t>(), r["batch"].get<int>(), r["prefill_chunk"].get<int64_t>());
  if (r["status"] != "ok") {
    fmt::print("{}  {}: {}\n", head, r["status"].get<std::string>(), r.value("reason", ""));
  } else {
    fmt::print("{}  {:6.2f} {:7.3f} {:9.1f} {:8.1f} {:4.0f}% {:8.1f} {:8.2f} {:7.2f} {:6.2f} {:5.0f}%\n", head,
               r["load_s"].get<double>(), med("ttft_s"), med("prefill_tok_s"), med("decode_tok_s_per_seq"),
               100 * r["seq_decode_fraction_of_read_bandwidth"].get<double>(), med("decode_tok_s_aggregate"),
               1e3 * med("itl_p50_s"), 1e3 * med("itl_p99_s"), r[sweep_memory_key(r)].get<int64_t>() / 1e9,
               100 * r["comm_share"].get<double>());
  }
  std::fflush(stdout);
}

// The answer to "which split, at what cost", from the points that ran.
std::vector<std::string> summary(const std::vector<json>& records) {
  std::vector<std::string> lines;
  std::vector<const json*> ok;
  for (const auto& r : records)
    if (r["status"] == "ok") ok.push_back(&r);
  if (ok.empty()) return {"no point ran"};
  auto med = [](const json& r, const char* k) { return r[k]["median"].get<double>(); };
  std::map<int, std::vector<const json*>> by_batch;
  int64_t max_prompt = 0;
  for (const json* r : ok) {
    by_batch[(*r)["batch"].get<int>()].push_back(r);
    max_prompt = std::max(max_prompt, (*r)["prompt_tokens"].get<int64_t>());
  }
  // Per batch size: which split and backend decodes fastest (per sequence, after its prompt) and
  // which prefills fastest, each the median over the sweep's prompts.
  auto rank_by = [&](const std::vector<const json*>& rs, const char* field) {
    std::map<std::string, std::vector<double>> rates;
    for (const json* r : rs) {
      std::string name = (*r)["split"].get<std::string>();
      if ((*r)["backend"] != "-") name += " over " + (*r)["backend"].get<std::string>();
      rates[name].push_back(med(*r, field));
    }
    std::vector<std::pair<double, std::string>> ranked;
    for (auto& [name, v] : rates) ranked.push_back({cli::median(v), name});
    std::sort(ranked.rbegin(), ranked.rend());
    return ranked;
  };
  for (auto& [batch, rs] : by_batch) {
    for (auto [field, verb] : {std::pair{"decode_tok_s_per_seq", "decodes"}, std::pair{"prefill_tok_s", "prefills"}}) {
      const auto ranked = rank_by(rs, field);
      if (ranked.empty() || ranked[0].first <= 0) continue;  // e.g. no decode with gen=1
      std::string line = fmt::format("for prompts up to {} tokens and batch {}, {} {} fastest ({:.1f} tok/s{})",
                                     max_prompt, batch, ranked[0].second, verb, ranked[0].first,
                                     std::string(verb) == "decodes" ? " per sequence" : "");
      if (ranked.size() > 1)
        line += fmt::format("; then {} ({:.0f}% of it)", ranked[1].second, 100 * ranked[1].first / ranked[0].first);
      lines.push_back(line);
    }
  }
  // Cost: the split with the least memory per rank against the fastest one.
  const json* fastest = *std::max_element(ok.begin(), ok.end(), [&](const json* a, const json* b) {
    return med(*a, "decode_tok_s_aggregate") < med(*b, "decode_tok_s_aggregate");  // end to end
  });
  const char* memory = sweep_memory_key(*ok[0]);  // every point of one sweep runs on the same device
  const json* leanest = *std::min_element(ok.begin(), ok.end(), [&](const json* a, const json* b) {
    return (*a)[memory].get<int64_t>() < (*b)[memory].get<int64_t>();
  });
  const json* quickest = *std::min_element(ok.begin(), ok.end(), [](const json* a, const json* b) {
    return (*a)["load_s"].get<double>() < (*b)["load_s"].get<double>();
  });
  const std::string fast = (*fastest)["split"].get<std::string>();
  if ((*leanest)["split"] != fast && (*fastest)[memory].get<int64_t>() > 0)
    lines.push_back(fmt::format("{} needs {:.0f}% of {}'s {} per rank ({:.2f} vs {:.2f} GB)",
                                (*leanest)["split"].get<std::string>(),
                                100.0 * double((*leanest)[memory].get<int64_t>()) / double((*fastest)[memory].get<int64_t>()),
                                fast, memory == std::string("max_device_bytes") ? "GPU memory" : "memory",
                                (*leanest)[memory].get<int64_t>() / 1e9, (*fastest)[memory].get<int64_t>() / 1e9));
  if ((*quickest)["split"] != fast && (*quickest)["load_s"].get<double>() > 0)
    lines.push_back(fmt::format("{} loads {:.1f}x faster than {} ({:.2f} s vs {:.2f} s)", (*quickest)["split"].get<std::string>(),
                                (*fastest)["load_s"].get<double>() / (*quickest)["load_s"].get<double>(), fast,
                                (*quickest)["load_s"].get<double>(), (*fastest)["load_s"].get<double>()));
  int failed = 0;
  for (const auto& r : records) failed += r["status"] != "ok";
  if (failed) lines.push_back(fmt::format("{} of {} points did not run (see status and reason)", failed, records.size()));
  return lines;
}

}  // namespace

void run_sweep(BenchSweepFlags& f) {
  SHARDLM_CHECK(!f.model.empty(), "bench --sweep needs --model");
  std::vector<SweepPoint> points = parse_sweep(f.spec);
  if (f.out.empty()) {
    std::time_t now = std::time(nullptr);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
    f.out = std::string("bench-results/") + stamp;
  }
  if (!f.link.empty()) {
    // The emulated network carries the host group's traffic; GPU ranks exchange through NVLink
    // or PCIe, which it cannot shape.
    if (f.device == "cuda") fail("--emulate-link shapes the links of CPU ranks; it cannot be used with --device cuda");
    parse_link(f.link);  // a bad spec fails before anything runs
    std::string why;
    if (!EmulatedNetwork::available(&why)) fail("--emulate-link: {}", why);
  }
  const json model = model_json(f.model);
  // The ceilings before any output: a GPU sweep on a machine without one stops here, having
  // written nothing.
  const json machine = machine_json(f.device);
  std::filesystem::create_directories(f.out);
  const std::string jsonl = f.out + "/results.jsonl", csv = f.out + "/results.csv";
  log_info("bench: {} points -> {} and {}", points.size(), jsonl, csv);
  f.tokenizer = std::make_shared<const Tokenizer>(open_model_files(f.model)->tokenizer());

  std::ofstream lines(jsonl, std::ios::app), table(csv);
  if (!lines || !table) fail("{}: cannot write results", f.out);
  for (size_t i = 0; i < csv_columns().size(); ++i) table << (i ? "," : "") << csv_columns()[i];
  table << "\n";
  if (f.device == "cuda")
    fmt::print("GPU 0: {}; read bandwidth {:.1f} GB/s, copy bandwidth {:.1f} GB/s (read + written)\n",
               machine["gpu"].get<std::string>(), machine["read_bandwidth_bytes_s"].get<double>() / 1e9,
               machine["copy_bandwidth_bytes_s"].get<double>() / 1e9);
  else
    fmt::print("read bandwidth {:.1f} GB/s, FMA peak {:.1f} GFLOP/s\n", machine["read_bandwidth_bytes_s"].get<double>() / 1e9,
               machine["fma_peak_flop_s"].get<double>() / 1e9);
  // "bw": a sequence's decode steps' weight bytes over one device's read bandwidth.
  fmt::print("{:<8} {:<14} {:>6} {:>4} {:>5} {:>5}  {:>6} {:>7} {:>9} {:>8} {:>5} {:>8} {:>8} {:>7} {:>6} {:>6}\n", "split",
             "backend", "prompt", "gen", "batch", "chunk", "load_s", "ttft_s", "prefill/s", "seq tok/s", "bw", "agg tok/s",
             "itl50ms", "itl99ms", f.device == "cuda" ? "GPU GB" : "RSS GB", "comm");
  std::vector<json> records;
  Stopwatch clock;
  for (size_t i = 0; i < points.size(); ++i) {
    const double done = double(i), elapsed = clock.seconds();
    const int bar = int(30 * i / points.size());
    log_info("bench: [{}{}] {}/{}  elapsed {}  ETA {}", std::string(size_t(bar), '#'), std::string(size_t(30 - bar), '.'), i,
             points.size(), eta(elapsed), i ? eta(elapsed / done * double(points.size() - i)) : "?");
    // Each point's figures are its own: the peak RSS starts over, and the ranks' progress lines
    // stay out of the table.
    reset_peak_rss();
    const LogLevel level = log_level();
    set_log_level(LogLevel::Quiet);
    json r = run_point(points[i], f, model, machine);
    set_log_level(level);
    r["machine"] = machine;
    r["model"] = model;
    r["shardlm_version"] = SHARDLM_VERSION;
    r["time"] = std::time(nullptr);
    records.push_back(r);
    lines << r.dump(-1, ' ', false, json::error_handler_t::replace) << "\n" << std::flush;
    for (size_t c = 0; c < csv_columns().size(); ++c) table << (c ? "," : "") << csv_field(r, csv_columns()[c]);
    table << "\n" << std::flush;
    print_row(r);
  }
  log_info("bench: {} points in {}", points.size(), eta(clock.seconds()));
  fmt::print("\n");
  for (const auto& line : summary(records)) fmt::print("{}\n", line);
}

}  // namespace shardlm::cli
