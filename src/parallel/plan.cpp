#include "parallel/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace shardlm {

namespace {

// Splits n units into parts of sizes as equal as possible: part i is [n*i/parts, n*(i+1)/parts).
int64_t even_edge(int64_t n, int parts, int i) { return n * i / parts; }

// Contiguous split of `cost` into `parts` ranges minimizing the largest cost/capacity,
// every range non-empty (dynamic programming; L and parts are small).
std::vector<StageRange> balance(const std::vector<double>& cost, const std::vector<double>& capacity) {
  const int L = int(cost.size()), P = int(capacity.size());
  std::vector<double> prefix(size_t(L) + 1, 0);
  for (int i = 0; i < L; ++i) prefix[size_t(i) + 1] = prefix[size_t(i)] + cost[size_t(i)];
  const double inf = std::numeric_limits<double>::infinity();
  // best[p][i]: smallest max load placing the first i layers on the first p stages.
  std::vector<std::vector<double>> best(size_t(P) + 1, std::vector<double>(size_t(L) + 1, inf));
  std::vector<std::vector<int>> cut(size_t(P) + 1, std::vector<int>(size_t(L) + 1, 0));
  best[0][0] = 0;
  for (int p = 1; p <= P; ++p)
    for (int i = p; i <= L - (P - p); ++i)
      for (int j = p - 1; j < i; ++j) {
        double load = std::max(best[size_t(p) - 1][size_t(j)], (prefix[size_t(i)] - prefix[size_t(j)]) / capacity[size_t(p) - 1]);
        // Ties go to the earlier cut, so equal costs split as evenly as the count allows.
        if (load < best[size_t(p)][size_t(i)] - 1e-12) best[size_t(p)][size_t(i)] = load, cut[size_t(p)][size_t(i)] = j;
      }
  std::vector<StageRange> ranges(static_cast<size_t>(P));
  for (int p = P, i = L; p >= 1; --p) {
    int j = cut[size_t(p)][size_t(i)];
    ranges[size_t(p) - 1] = {j, i};
    i = j;
  }
  return ranges;
}

}  // namespace

VocabRange Plan::vocab_of(int rank) const {
  const StageRange& st = stages[size_t(stage_of(rank))];
  const int64_t n = st.vocab_end - st.vocab_begin, t = tp_rank_of(rank);
  return {st.vocab_begin + even_edge(n, tp, int(t)), st.vocab_begin + even_edge(n, tp, int(t) + 1)};
}

Plan make_plan(const ModelConfig& c, const PlanOptions& o) {
  SHARDLM_CHECK(o.pp >= 1 && o.tp >= 1, "--pp and --tp must be at least 1 (got {} and {})", o.pp, o.tp);
  SHARDLM_CHECK(o.pp <= c.num_layers, "--pp {} asks for more pipeline stages than the model's {} layers", o.pp,
                c.num_layers);
  SHARDLM_CHECK(o.tp <= c.num_heads, "--tp {} asks for more tensor-parallel ranks than the model's {} attention heads",
                o.tp, c.num_heads);
  SHARDLM_CHECK(o.stage_weights.empty() || int(o.stage_weights.size()) == o.pp,
                "{} stage weights given for {} pipeline stages", o.stage_weights.size(), o.pp);
  for (double w : o.stage_weights) SHARDLM_CHECK(w > 0, "stage weights must be positive (got {})", w);

  Plan plan;
  plan.pp = o.pp;
  plan.tp = o.tp;

  // Pipeline: balance weight bytes. Contiguous layers first, as evenly as their count allows;
  // then the lm_head rows are poured into the stages the layers leave light (water filling),
  // so all stages end up near the same share. The embedding is not counted: a step reads only
  // the rows of its tokens.
  const double H = double(c.hidden_size), D = double(c.head_dim);
  const double layer_cost = H * D * double(2 * c.num_heads + 2 * c.num_kv_heads) + 3.0 * H * double(c.intermediate_size);
  const double head_cost = H * double(c.vocab_size);
  std::vector<double> capacity = o.stage_weights.empty() ? std::vector<double>(size_t(o.pp), 1.0) : o.stage_weights;
  plan.stages = balance(std::vector<double>(size_t(c.num_layers), layer_cost), capacity);
  std::vector<double> load(size_t(o.pp));
  for (int s = 0; s < o.pp; ++s)
    load[size_t(s)] = double(plan.stages[size_t(s)].layer_end - plan.stages[size_t(s)].layer_begin) * layer_cost;
  // The level (load per unit of capacity) at which the stages below it absorb the whole head.
  auto poured = [&](double level) {
    double sum = 0;
    for (int s = 0; s < o.pp; ++s) sum += std::max(0.0, level * capacity[size_t(s)] - load[size_t(s)]);
    return sum;
  };
  double lo = 0, hi = 0;
  for (int s = 0; s < o.pp; ++s) hi = std::max(hi, (load[size_t(s)] + head_cost) / capacity[size_t(s)]);
  for (int i = 0; i < 200; ++i) {
    const double mid = (lo + hi) / 2;
    (poured(mid) < head_cost ? lo : hi) = mid;
  }
  double cumulative = 0;
  for (int s = 0; s < o.pp; ++s) {
    StageRange& st = plan.stages[size_t(s)];
    st.vocab_begin = s == 0 ? 0 : plan.stages[size_t(s) - 1].vocab_end;
    cumulative += std::max(0.0, hi * capacity[size_t(s)] - load[size_t(s)]);
    st.vocab_end = s == o.pp - 1 ? c.vocab_size
                                 : std::clamp(int64_t(std::llround(cumulative / head_cost * double(c.vocab_size))),
                                              st.vocab_begin, c.vocab_size);
  }

  // Tensor parallel: heads as evenly as possible; each rank reads the kv heads its query heads map
  // to (a kv head shared by two ranks is held by both). ffn in blocks of 32 so quantized column
  // slices stay whole blocks.
  const int64_t group = c.num_heads / c.num_kv_heads;
  const bool blocks = c.intermediate_size % 32 == 0;
  const int64_t ffn_units = blocks ? c.intermediate_size / 32 : c.intermediate_size;
  const int64_t unit = blocks ? 32 : 1;
  for (int t = 0; t < o.tp; ++t) {
    TpSlice s;
    s.head_begin = even_edge(c.num_heads, o.tp, t);
    s.head_end = even_edge(c.num_heads, o.tp, t + 1);
    s.kv_head_begin = s.head_begin / group;
    s.kv_head_end = (s.head_end - 1) / group + 1;
    s.ffn_begin = even_edge(ffn_units, o.tp, t) * unit;
    s.ffn_end = even_edge(ffn_units, o.tp, t + 1) * unit;
    SHARDLM_CHECK(s.ffn_end > s.ffn_begin, "--tp {} leaves a rank without MLP features", o.tp);
    plan.slices.push_back(s);
  }
  return plan;
}

nlohmann::json plan_to_json(const Plan& p, const ModelConfig& c) {
  nlohmann::json ranks = nlohmann::json::array();
  for (int r = 0; r < p.world_size(); ++r) {
    const StageRange& st = p.stages[size_t(p.stage_of(r))];
    const TpSlice& s = p.slices[size_t(p.tp_rank_of(r))];
    const bool first = p.stage_of(r) == 0;
    const VocabRange v = p.vocab_of(r);
    ranks.push_back({{"rank", r},
                     {"stage", p.stage_of(r)},
                     {"tp_rank", p.tp_rank_of(r)},
                     {"layers", {st.layer_begin, st.layer_end}},
                     {"heads", {s.head_begin, s.head_end}},
                     {"kv_heads", {s.kv_head_begin, s.kv_head_end}},
                     {"ffn", {s.ffn_begin, s.ffn_end}},
                     {"embedding", first},
                     {"lm_head_rows", v.end > v.begin ? nlohmann::json{v.begin, v.end} : nlohmann::json(nullptr)}});
  }
  return {{"pp", p.pp},
          {"tp", p.tp},
          {"world_size", p.world_size()},
          {"model", {{"layers", c.num_layers}, {"heads", c.num_heads}, {"kv_heads", c.num_kv_heads},
                     {"intermediate_size", c.intermediate_size}, {"vocab_size", c.vocab_size}}},
          {"ranks", ranks}};
}

std::vector<std::string> describe_plan(const Plan& p) {
  std::vector<std::string> lines;
  for (int r = 0; r < p.world_size(); ++r) {
    const StageRange& st = p.stages[size_t(p.stage_of(r))];
    const TpSlice& s = p.slices[size_t(p.tp_rank_of(r))];
    std::string line = fmt::format("rank {}: stage {} layers {}-{}", r, p.stage_of(r), st.layer_begin, st.layer_end - 1);
    if (p.tp > 1)
      line += fmt::format(", heads {}-{}, kv heads {}-{}, ffn {}-{}", s.head_begin, s.head_end - 1, s.kv_head_begin,
                          s.kv_head_end - 1, s.ffn_begin, s.ffn_end - 1);
    if (p.stage_of(r) == 0) line += ", embedding";
    const VocabRange v = p.vocab_of(r);
    if (p.world_size() == 1) line += ", lm_head";
    else if (v.end > v.begin) line += fmt::format(", lm_head rows {}-{}", v.begin, v.end - 1);
    lines.push_back(line);
  }
  return lines;
}

}  // namespace shardlm
