// shardlm bench --plot results.jsonl --out DIR: draws the sweep with gnuplot, each chart as PNG
// and SVG: decode rate by split, prefill rate by prompt length, load time and memory per rank by
// split, and inter-token latency by batch size. The data files and scripts stay beside the
// pictures, so a chart can be restyled and redrawn by hand.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "cli/bench_common.h"
#include "core/error.h"
#include "core/log.h"

namespace shardlm::cli {

namespace {

using nlohmann::json;

double med(const json& r, const char* key) { return r.contains(key) ? r[key]["median"].get<double>() : 0.0; }

std::string series_of(const json& r) {
  std::string s = r["split"].get<std::string>();
  if (r["backend"] != "-") s += " " + r["backend"].get<std::string>();
  return s;
}

// Splits in a natural order: 1, PP2.., TP2.., PPxTP.
int split_rank(const std::string& s) {
  if (s == "1") return 0;
  int pp = 0, tp = 0;
  if (std::sscanf(s.c_str(), "PP%dxTP%d", &pp, &tp) == 2) return 3000 + pp * 10 + tp;
  if (std::sscanf(s.c_str(), "PP%d", &pp) == 1) return 1000 + pp;
  if (std::sscanf(s.c_str(), "TP%d", &tp) == 1) return 2000 + tp;
  return 9000;
}

void run_gnuplot(const std::string& dir, const std::string& name, const std::string& body) {
  for (const auto& [terminal, ext] : {std::pair{"pngcairo size 900,560 font 'sans,10'", "png"},
                                      std::pair{"svg size 900,560 dynamic font 'sans,10'", "svg"}}) {
    std::string script = fmt::format("{}/{}.{}.gp", dir, name, ext);
    std::ofstream(script) << "set terminal " << terminal << "\nset output '" << dir << "/" << name << "." << ext << "'\n"
                          << body;
    std::string cmd = fmt::format("gnuplot '{}' 2>&1", script);
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) fail("cannot run gnuplot (install gnuplot-nox)");
    std::string out;
    char buf[512];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    int status = ::pclose(p);
    if (status != 0) fail("gnuplot failed on {}: {}", script, out.empty() ? "is gnuplot installed?" : out);
  }
  log_info("plot: {}/{}.png and .svg", dir, name);
}

std::string quoted(const std::string& s) { return "\"" + s + "\""; }

}  // namespace

void run_plot(const std::string& results, const std::string& out) {
  std::ifstream in(results);
  if (!in) fail("{}: cannot open", results);
  std::vector<json> ok;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    json r;
    try {
      r = json::parse(line);
    } catch (const json::exception&) {
      fail("{}:{}: not a JSON record", results, n);
    }
    if (!r.is_object() || !r.contains("status") || !r.contains("split")) fail("{}:{}: not a bench record", results, n);
    if (r["status"] == "ok") ok.push_back(r);
  }
  if (ok.empty()) fail("{}: no point that ran", results);
  std::filesystem::create_directories(out);
  std::string model = ok[0]["model"].value("description", "");
  for (char& c : model)
    if (c == '"' || c == '\'') c = ' ';

  // 1. Decode rate by split (rows) and backend (bars): median over the other parameters.
  {
    std::map<std::string, std::map<std::string, std::vector<double>>> v;  // split -> backend -> rates
    std::set<std::string> backends;
    for (const auto& r : ok) {
      v[r["split"]][r["backend"]].push_back(med(r, "decode_tok_s_aggregate"));
      backends.insert(r["backend"]);
    }
    std::vector<std::string> splits;
    for (auto& [s, _] : v) splits.push_back(s);
    std::sort(splits.begin(), splits.end(), [](auto& a, auto& b) { return split_rank(a) < split_rank(b); });
    std::ofstream dat(out + "/decode.dat");
    dat << "split";
    for (const auto& b : backends) dat << " " << quoted(b == "-" ? "one rank" : b);
    dat << "\n";
    for (const auto& s : splits) {
      dat << quoted(s);
      for (const auto& b : backends) dat << " " << (v[s].count(b) ? fmt::format("{:.3f}", median(v[s][b])) : "NaN");
      dat << "\n";
    }
    std::string plot = fmt::format(
        "set title 'Decode tokens/s by split ({})'\nset style data histogram\nset style histogram clustered gap 1\n"
        "set style fill solid 0.8 border -1\nset ylabel 'tokens/s (aggregate)'\nset yrange [0:*]\nset key top left\n"
        "set key autotitle columnheader\nplot for [c=2:{}] '{}/decode.dat' using c:xtic(1)\n",
        model, backends.size() + 1, out);
    dat.close();
    run_gnuplot(out, "decode", plot);
  }
  // 2. Prefill rate by prompt length, a line per split and backend.
  {
    std::map<std::string, std::map<int64_t, std::vector<double>>> v;
    for (const auto& r : ok) v[series_of(r)][r["prompt_tokens"].get<int64_t>()].push_back(med(r, "prefill_tok_s"));
    std::ofstream dat(out + "/prefill.dat");
    std::string plot = fmt::format(
        "set title 'Prefill tokens/s by prompt length ({})'\nset logscale x 2\nset xlabel 'prompt tokens'\n"
        "set ylabel 'tokens/s'\nset yrange [0:*]\nset key outside right\nset grid\nplot ",
        model);
    int index = 0;
    for (auto& [series, points] : v) {
      dat << "# " << series << "\n";
      for (auto& [prompt, rates] : points) dat << prompt << " " << median(rates) << "\n";
      dat << "\n\n";
      plot += fmt::format("{}'{}/prefill.dat' index {} using 1:2 with linespoints lw 2 title {}", index ? ", " : "", out,
                          index, quoted(series));
      ++index;
    }
    dat.close();
    run_gnuplot(out, "prefill", plot + "\n");
  }
  // 3. Load time and largest per-rank memory by split (GPU memory where the ranks ran on GPUs).
  {
    // A file may hold CPU and GPU sweeps (results are appended): GPU memory only where every
    // point ran on GPUs, and each record's own memory key.
    const auto on_gpus = std::count_if(ok.begin(), ok.end(), [](const json& r) { return r.value("device", "cpu") == "cuda"; });
    const char* what = on_gpus == 0 ? "peak RSS" : size_t(on_gpus) == ok.size() ? "GPU memory" : "GPU memory or peak RSS";
    std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> v;
    for (const auto& r : ok) {
      v[r["split"]].first.push_back(r["load_s"].get<double>());
      v[r["split"]].second.push_back(double(r.value(sweep_memory_key(r), int64_t(0))) / 1e9);
    }
    std::vector<std::string> splits;
    for (auto& [s, _] : v) splits.push_back(s);
    std::sort(splits.begin(), splits.end(), [](auto& a, auto& b) { return split_rank(a) < split_rank(b); });
    std::ofstream dat(out + "/memory.dat");
    dat << "split \"load s\" \"" << what << " GB per rank\"\n";
    for (const auto& s : splits) dat << quoted(s) << " " << median(v[s].first) << " " << median(v[s].second) << "\n";
    std::string plot = fmt::format(
        "set multiplot layout 1,2 title 'Load time and memory per rank by split ({})'\nset style data histogram\n"
        "set style fill solid 0.8 border -1\nset yrange [0:*]\nset key top left\nset key autotitle columnheader\n"
        "set title 'load time'\nset ylabel 'seconds'\nplot '{}/memory.dat' using 2:xtic(1)\n"
        "set title 'largest {} of a rank'\nset ylabel 'GB'\nplot '{}/memory.dat' using 3:xtic(1) lc 2\n"
        "unset multiplot\n",
        model, out, what, out);
    dat.close();
    run_gnuplot(out, "memory", plot);
  }
  // 4. Inter-token latency (p50, p99) by batch size, a line per split and backend.
  {
    std::map<std::string, std::map<int, std::pair<std::vector<double>, std::vector<double>>>> v;
    for (const auto& r : ok) {
      auto& cell = v[series_of(r)][r["batch"].get<int>()];
      cell.first.push_back(1e3 * med(r, "itl_p50_s"));
      cell.second.push_back(1e3 * med(r, "itl_p99_s"));
    }
    std::ofstream dat(out + "/latency.dat");
    std::string plot = fmt::format(
        "set title 'Inter-token latency by batch size ({})'\nset logscale x 2\nset xlabel 'batch (requests together)'\n"
        "set ylabel 'ms between tokens'\nset yrange [0:*]\nset key outside right\nset grid\nplot ",
        model);
    int index = 0;
    for (auto& [series, points] : v) {
      dat << "# " << series << "\n";
      for (auto& [batch, l] : points) dat << batch << " " << median(l.first) << " " << median(l.second) << "\n";
      dat << "\n\n";
      plot += fmt::format("{}'{}/latency.dat' index {} using 1:2 with linespoints lw 2 title {}, "
                          "'{}/latency.dat' index {} using 1:3 with lines dt 2 title {}",
                          index ? ", " : "", out, index, quoted(series + " p50"), out, index, quoted(series + " p99"));
      ++index;
    }
    dat.close();
    run_gnuplot(out, "latency", plot + "\n");
  }
}

}  // namespace shardlm::cli
