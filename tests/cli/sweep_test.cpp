// bench --sweep on the tiny preset (3 points) and bench --plot on its results: every record has
// every field, the figures agree with each other, and the charts are real PNG/SVG files holding
// the expected series.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "test_models.h"
#include "test_paths.h"

using namespace shardlm;
using nlohmann::json;

namespace {
std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}
uint32_t big_endian(const std::string& s, size_t at) {
  return uint32_t(uint8_t(s[at])) << 24 | uint32_t(uint8_t(s[at + 1])) << 16 | uint32_t(uint8_t(s[at + 2])) << 8 |
         uint8_t(s[at + 3]);
}
}  // namespace

TEST(Sweep, ThreePointsRecordEveryFieldConsistentlyAndPlot) {
  const std::string out = test::scratch_dir("sweep");
  std::string stdout_text, stderr_text;
  int status = test::run_command(test::shardlm_binary() + " bench --model " + test::test_model({}) +
                                     " --sweep 'split=1,pp2,tp2;prompt=16;gen=6;batch=2' --repeats 2 --warmup 1 --out " + out,
                                 &stdout_text, &stderr_text);
  ASSERT_EQ(status, 0) << stderr_text;
  std::vector<json> records;
  std::istringstream lines(slurp(out + "/results.jsonl"));
  for (std::string line; std::getline(lines, line);) records.push_back(json::parse(line));
  ASSERT_EQ(records.size(), 3u);
  std::set<std::string> splits;
  for (const json& r : records) {
    SCOPED_TRACE(r["split"].get<std::string>());
    splits.insert(r["split"]);
    ASSERT_EQ(r["status"], "ok") << r.value("reason", "");
    for (const char* key : {"machine", "model", "plan", "shardlm_version", "load_s", "ttft_s", "prefill_tok_s",
                            "decode_tok_s_per_seq", "decode_tok_s_aggregate", "itl_p50_s", "itl_p99_s",
                            "peak_rss_bytes_per_rank", "max_peak_rss_bytes", "comm_share", "longest_step_s", "bytes_sent_per_token",
                            "tokens_generated", "tokens_requested", "repeats", "prompt_tokens", "gen_tokens", "batch"})
      EXPECT_TRUE(r.contains(key)) << key;
    for (const char* key : {"ttft_s", "prefill_tok_s", "decode_tok_s_per_seq", "decode_tok_s_aggregate", "itl_p50_s"}) {
      EXPECT_LE(r[key]["min"].get<double>(), r[key]["median"].get<double>()) << key;
      EXPECT_LE(r[key]["median"].get<double>(), r[key]["max"].get<double>()) << key;
      EXPECT_GT(r[key]["median"].get<double>(), 0) << key;
    }
    // Two sequences decode together: the aggregate beats one sequence's rate.
    // Every sequence decodes within the run's wall time, so the aggregate rate (all tokens over the
    // wall time) is at most batch x gen / (gen - 1) times the sequences' decode rate. (That it beats
    // one sequence's rate depends on how long the prompts took on a busy machine: not a law.)
    EXPECT_LE(r["decode_tok_s_aggregate"]["median"].get<double>(),
              2 * 6.0 / 5.0 * r["decode_tok_s_per_seq"]["median"].get<double>() * (1 + 1e-9));
    EXPECT_GT(r["decode_tok_s_aggregate"]["median"].get<double>(), 0.0);
    EXPECT_EQ(r["tokens_generated"], r["tokens_requested"]);
    EXPECT_EQ(r["tokens_generated"].get<int64_t>(), 2 * 2 * 6);  // repeats x batch x gen
    EXPECT_LE(r["itl_p50_s"]["median"].get<double>(), r["itl_p99_s"]["median"].get<double>());
    // No step is longer than a whole run's prefill plus decode, and some step took time.
    EXPECT_GT(r["longest_step_s"].get<double>(), 0.0);
    EXPECT_LE(r["longest_step_s"].get<double>(), r["ttft_s"]["max"].get<double>() + 1.0);
    EXPECT_EQ(r["peak_rss_bytes_per_rank"].size(), size_t(r["pp"].get<int>() * r["tp"].get<int>()));
    EXPECT_EQ(r["plan"].size(), size_t(r["pp"].get<int>() * r["tp"].get<int>()));
    EXPECT_GT(r["machine"]["read_bandwidth_bytes_s"].get<double>(), 0);
    EXPECT_EQ(r["device"], "cpu");
    EXPECT_FALSE(r.contains("max_device_bytes"));
    // A decode step reads every f32 weight of the layers and the head once, counted here from the
    // model's config.json; the record's share of the read bandwidth is that over the bandwidth.
    std::ifstream config_file(r["model"]["path"].get<std::string>() + "/config.json");
    const json cfg = json::parse(config_file);
    const int64_t hidden = cfg["hidden_size"], heads = cfg["num_attention_heads"];
    const int64_t q = heads * cfg.value("head_dim", hidden / heads), kv = cfg["num_key_value_heads"].get<int64_t>() * (q / heads);
    const int64_t layer_params = 2 * hidden * q + 2 * hidden * kv + 3 * hidden * cfg["intermediate_size"].get<int64_t>();
    const int64_t params = cfg["num_hidden_layers"].get<int64_t>() * layer_params + cfg["vocab_size"].get<int64_t>() * hidden;
    EXPECT_EQ(r["model"]["decode_bytes_per_token"].get<int64_t>(), 4 * params);
    EXPECT_NEAR(r["seq_decode_fraction_of_read_bandwidth"].get<double>(),
                r["decode_tok_s_per_seq"]["median"].get<double>() * double(4 * params) /
                    r["machine"]["read_bandwidth_bytes_s"].get<double>(),
                1e-9);
    if (r["split"] == "1") EXPECT_EQ(r["bytes_sent_per_token"].get<double>(), 0.0);
    else EXPECT_GT(r["bytes_sent_per_token"].get<double>(), 0.0);
  }
  EXPECT_EQ(splits, (std::set<std::string>{"1", "PP2", "TP2"}));
  // CSV: a header and one row per point; the terminal summary answers the question.
  std::string csv = slurp(out + "/results.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 4);
  EXPECT_EQ(csv.rfind("split,pp,tp,backend,prompt_tokens", 0), 0u);
  EXPECT_NE(stdout_text.find("decodes fastest"), std::string::npos) << stdout_text;
  EXPECT_NE(stdout_text.find("prefills fastest"), std::string::npos) << stdout_text;
  EXPECT_NE(stderr_text.find("ETA"), std::string::npos);

  status = test::run_command(test::shardlm_binary() + " bench --plot " + out + "/results.jsonl --out " + out + "/plots",
                             nullptr, &stderr_text);
  ASSERT_EQ(status, 0) << stderr_text;
  const std::map<std::string, std::set<std::string>> expected = {
      {"decode", {"one rank", "shm"}},
      {"prefill", {"1", "PP2 shm", "TP2 shm"}},
      {"memory", {"load s", "peak RSS GB per rank"}},
      {"latency", {"1 p50", "1 p99", "PP2 shm p50", "PP2 shm p99", "TP2 shm p50", "TP2 shm p99"}}};
  for (const auto& [chart, series] : expected) {
    SCOPED_TRACE(chart);
    std::string png = slurp(out + "/plots/" + chart + ".png");
    ASSERT_GT(png.size(), 1000u);
    EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
    EXPECT_EQ(png.substr(12, 4), "IHDR");
    EXPECT_EQ(big_endian(png, 16), 900u);
    EXPECT_EQ(big_endian(png, 20), 560u);
    std::string svg = slurp(out + "/plots/" + chart + ".svg");
    EXPECT_NE(svg.find("<svg"), std::string::npos);
    EXPECT_NE(svg.find("</svg>"), std::string::npos);
    std::set<std::string> titles;
    for (size_t at = 0; (at = svg.find("<title>", at)) != std::string::npos;) {
      size_t end = svg.find("</title>", at);
      titles.insert(svg.substr(at + 7, end - at - 7));
      at = end;
    }
    titles.erase("Gnuplot");
    EXPECT_EQ(titles, series);
  }
  // A file holding a GPU sweep's records beside the CPU ones (results are appended): each record's
  // own memory (GPU bytes for the GPU one), the chart named for both.
  {
    std::ofstream mixed(out + "/mixed.jsonl");
    for (const json& r : records) {  // a GPU record first: the CPU ones lack its memory key
      json gpu = r;
      gpu["device"] = "cuda";
      gpu["max_device_bytes"] = int64_t(7) << 30;
      mixed << gpu.dump() << "\n" << r.dump() << "\n";
    }
  }
  status = test::run_command(test::shardlm_binary() + " bench --plot " + out + "/mixed.jsonl --out " + out + "/mixed",
                             nullptr, &stderr_text);
  ASSERT_EQ(status, 0) << stderr_text;
  const std::string memory = slurp(out + "/mixed/memory.dat");
  EXPECT_NE(memory.find("\"GPU memory or peak RSS GB per rank\""), std::string::npos) << memory;
  // A file that is not a sweep is refused with its name.
  std::ofstream(out + "/junk.jsonl") << "not json\n";
  status = test::run_command(test::shardlm_binary() + " bench --plot " + out + "/junk.jsonl", nullptr, &stderr_text);
  EXPECT_EQ(status, 1);
  EXPECT_NE(stderr_text.find("junk.jsonl:1"), std::string::npos) << stderr_text;
}

// A sweep over an emulated link records the link and the tcp backend its splits crossed, runs a
// one-rank point without it, and leaves no namespace behind. Needs root (skips otherwise).
TEST(Sweep, EmulatedLinkIsRecordedAndRemoved) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to create network namespaces";
  const std::string out = test::scratch_dir("sweep-link");
  std::string stdout_text, stderr_text;
  // `exec` keeps the shell's pid, which names the sweep's namespaces (slmemu<pid>...).
  int status = test::run_command("sh -c 'echo $$; exec " + test::shardlm_binary() + " bench --model " +
                                     test::test_model({}) +
                                     " --sweep \"split=1,pp2;prompt=16;gen=4;batch=1\" --emulate-link 1gbe --repeats 1"
                                     " --warmup 0 --out " + out + "'",
                                 &stdout_text, &stderr_text);
  ASSERT_EQ(status, 0) << stderr_text;
  std::ifstream in(out + "/results.jsonl");
  std::vector<json> records;
  for (std::string line; std::getline(in, line);) records.push_back(json::parse(line));
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0]["split"], "1");
  EXPECT_FALSE(records[0].contains("link"));
  EXPECT_EQ(records[1]["split"], "PP2");
  EXPECT_EQ(records[1]["status"], "ok") << records[1].dump();
  EXPECT_EQ(records[1]["link"], "1gbe");
  EXPECT_EQ(records[1]["backend"], "tcp-ring");
  EXPECT_GT(records[1]["bytes_sent_per_token"].get<double>(), 0.0);
  const std::string prefix = "slmemu" + std::to_string(std::stoll(stdout_text) % 100000);
  std::string namespaces;
  test::run_command("ip netns list", &namespaces);
  EXPECT_EQ(namespaces.find(prefix + "r"), std::string::npos) << namespaces;
  EXPECT_EQ(namespaces.find(prefix + "hub"), std::string::npos) << namespaces;
}
