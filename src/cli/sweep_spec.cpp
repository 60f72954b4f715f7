#include "cli/sweep_spec.h"

#include <fmt/format.h>

#include <map>
#include <regex>
#include <sstream>

#include "core/error.h"

namespace shardlm::cli {

std::string SweepPoint::split_name() const {
  if (pp * tp == 1) return "1";
  if (tp == 1) return fmt::format("PP{}", pp);
  if (pp == 1) return fmt::format("TP{}", tp);
  return fmt::format("PP{}xTP{}", pp, tp);
}

std::string SweepPoint::backend_name() const {
  if (pp * tp == 1) return "-";
  return backend == "tcp" ? "tcp-" + topology : backend;
}

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, sep);) {
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

int64_t number(const std::string& key, const std::string& v, int64_t min) {
  try {
    size_t used = 0;
    int64_t n = std::stoll(v, &used);
    if (used == v.size() && n >= min) return n;
  } catch (const std::exception&) {
  }
  fail("--sweep: {}={} is not a whole number >= {}", key, v, min);
}

}  // namespace

std::vector<SweepPoint> parse_sweep(const std::string& spec) {
  std::map<std::string, std::vector<std::string>> values = {{"split", {"1"}}, {"backend", {"shm"}}, {"prompt", {"128"}},
                                                            {"gen", {"32"}},  {"batch", {"1"}},     {"chunk", {"256"}}};
  for (const auto& part : split(spec, ';')) {
    auto eq = part.find('=');
    if (eq == std::string::npos) fail("--sweep: '{}' is not key=values", part);
    std::string key = part.substr(0, eq);
    if (!values.count(key)) fail("--sweep: unknown key '{}' (keys: split, backend, prompt, gen, batch, chunk)", key);
    auto list = split(part.substr(eq + 1), ',');
    if (list.empty()) fail("--sweep: no values for '{}'", key);
    values[key] = list;
  }
  std::vector<std::pair<int, int>> splits;
  static const std::regex form("^(1)$|^(?:pp(\\d+))?(?:x)?(?:tp(\\d+))?$", std::regex::icase);
  for (const auto& s : values["split"]) {
    std::smatch m;
    if (!std::regex_match(s, m, form) || (!m[1].matched && !m[2].matched && !m[3].matched))
      fail("--sweep: split '{}' is not 1, ppN, tpN or ppNxtpM", s);
    int pp = m[2].matched ? int(number("split", m[2], 1)) : 1, tp = m[3].matched ? int(number("split", m[3], 1)) : 1;
    splits.push_back({pp, tp});
  }
  std::vector<std::pair<std::string, std::string>> backends;
  for (const auto& b : values["backend"]) {
    if (b == "shm" || b == "mpi") backends.push_back({b, "ring"});
    else if (b == "tcp" || b == "tcp-ring") backends.push_back({"tcp", "ring"});
    else if (b == "tcp-mesh") backends.push_back({"tcp", "mesh"});
    else fail("--sweep: backend '{}' is not shm, tcp-ring, tcp-mesh or mpi", b);
  }
  std::vector<SweepPoint> points;
  for (auto [pp, tp] : splits) {
    const bool one = pp * tp == 1;
    for (size_t bi = 0; bi < (one ? 1 : backends.size()); ++bi)
      for (const auto& prompt : values["prompt"])
        for (const auto& gen : values["gen"])
          for (const auto& batch : values["batch"])
            for (const auto& chunk : values["chunk"]) {
              SweepPoint p;
              p.pp = pp, p.tp = tp;
              if (!one) p.backend = backends[bi].first, p.topology = backends[bi].second;
              p.prompt = number("prompt", prompt, 1);
              p.gen = number("gen", gen, 1);
              p.batch = int(number("batch", batch, 1));
              p.chunk = number("chunk", chunk, 0);
              points.push_back(p);
            }
  }
  return points;
}

}  // namespace shardlm::cli
