// Tensor names between Hugging Face and llama.cpp, and the Q/K row order of arch "llama".
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "formats/gguf.h"
#include "formats/model_files.h"

using namespace shardlm;

TEST(GgufNames, EveryTensorMapsBothWays) {
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
      {"model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"},
      {"model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"},
      {"model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight"},
      {"model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight"},
      {"model.layers.0.self_attn.o_proj.weight", "blk.0.attn_output.weight"},
      {"model.layers.17.self_attn.q_norm.weight", "blk.17.attn_q_norm.weight"},
      {"model.layers.17.self_attn.k_norm.weight", "blk.17.attn_k_norm.weight"},
      {"model.layers.17.post_attention_layernorm.weight", "blk.17.ffn_norm.weight"},
      {"model.layers.123.mlp.gate_proj.weight", "blk.123.ffn_gate.weight"},
      {"model.layers.123.mlp.up_proj.weight", "blk.123.ffn_up.weight"},
      {"model.layers.10.mlp.down_proj.weight", "blk.10.ffn_down.weight"},
  };
  for (const auto& [hf, gguf] : pairs) {
    EXPECT_EQ(gguf_name_from_hf(hf), gguf) << hf;
    EXPECT_EQ(hf_name_from_gguf(gguf), hf) << gguf;
  }
}

TEST(GgufNames, NamesWithoutCounterpartGiveEmpty) {
  for (const char* hf : {"model.layers.0.self_attn.q_proj.bias", "model.layers.x.mlp.up_proj.weight",
                         "model.layers.01.mlp.up_proj.weight", "model.layers.-1.mlp.up_proj.weight",
                         "model.layers.3.mlp.up_proj", "model.layers.3", "model.layers.3.", "model.rotary_emb.inv_freq",
                         "token_embd.weight", "", "model.layers.3.mlp.up_proj.weight.extra"})
    EXPECT_EQ(gguf_name_from_hf(hf), "") << hf;
  for (const char* g : {"rope_freqs.weight", "blk.0.attn_q.bias", "blk.a.attn_q.weight", "blk..attn_q.weight",
                        "blk.007.attn_q.weight", "model.embed_tokens.weight", "blk.0.ffn_gate_exps.weight", ""})
    EXPECT_EQ(hf_name_from_gguf(g), "") << g;
}

TEST(GgufRowOrder, MatchesLlamaCppPermute) {
  // llama.cpp: w.reshape(n_head, 2, d/2, K).swapaxes(1, 2).reshape(w.shape). With d = 4, one head,
  // the GGUF rows are HF rows 0, 2, 1, 3; with d = 8, rows 0, 4, 1, 5, 2, 6, 3, 7 in each head.
  EXPECT_EQ(hf_row_from_gguf_row(0, 4), 0);
  EXPECT_EQ(hf_row_from_gguf_row(1, 4), 2);
  EXPECT_EQ(hf_row_from_gguf_row(2, 4), 1);
  EXPECT_EQ(hf_row_from_gguf_row(3, 4), 3);
  const std::vector<int64_t> head = {0, 4, 1, 5, 2, 6, 3, 7};
  for (int64_t h = 0; h < 3; ++h)
    for (int64_t r = 0; r < 8; ++r) {
      EXPECT_EQ(hf_row_from_gguf_row(h * 8 + r, 8), h * 8 + head[size_t(r)]);
      EXPECT_EQ(gguf_row_from_hf_row(h * 8 + head[size_t(r)], 8), h * 8 + r);
    }
  for (int64_t d : {2, 64, 128})
    for (int64_t r = 0; r < 4 * d; ++r) {
      EXPECT_EQ(gguf_row_from_hf_row(hf_row_from_gguf_row(r, d), d), r);
      EXPECT_EQ(hf_row_from_gguf_row(gguf_row_from_hf_row(r, d), d), r);
    }
}

namespace {
// Hugging Face rotary embedding: dimension i pairs with i + d/2 (rotate_half).
void rope_halves(std::vector<float>& q, int64_t heads, int64_t d, int pos, const std::vector<float>& inv) {
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < d / 2; ++i) {
      float c = std::cos(pos * inv[size_t(i)]), s = std::sin(pos * inv[size_t(i)]);
      float& a = q[size_t(h * d + i)];
      float& b = q[size_t(h * d + i + d / 2)];
      float x = a, y = b;
      a = x * c - y * s, b = x * s + y * c;
    }
}
// llama.cpp's rotary embedding for arch llama (GPT-J style): dimension 2i pairs with 2i + 1.
void rope_adjacent(std::vector<float>& q, int64_t heads, int64_t d, int pos, const std::vector<float>& inv) {
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < d / 2; ++i) {
      float c = std::cos(pos * inv[size_t(i)]), s = std::sin(pos * inv[size_t(i)]);
      float& a = q[size_t(h * d + 2 * i)];
      float& b = q[size_t(h * d + 2 * i + 1)];
      float x = a, y = b;
      a = x * c - y * s, b = x * s + y * c;
    }
}
}  // namespace

TEST(GgufRowOrder, AdjacentRotationOfPermutedRowsEqualsHalvesRotation) {
  // q = W x with W's rows in HF order and rotated NeoX-style must equal, row for row, q' = W' x
  // with W' in GGUF order rotated GPT-J-style; attention scores q.k are then identical.
  const int64_t heads = 3, kv_heads = 1, d = 16, K = 24;
  std::mt19937 rng(7);
  std::normal_distribution<float> n01;
  auto matrix = [&](int64_t rows) {
    std::vector<float> m(static_cast<size_t>(rows * K));
    for (auto& v : m) v = n01(rng);
    return m;
  };
  std::vector<float> wq = matrix(heads * d), wk = matrix(kv_heads * d), x(K);
  for (auto& v : x) v = n01(rng);
  std::vector<float> inv(d / 2);
  for (int64_t i = 0; i < d / 2; ++i) inv[size_t(i)] = float(1.0 / std::pow(10000.0, 2.0 * double(i) / double(d)));

  auto project = [&](const std::vector<float>& w, int64_t rows, bool gguf_order) {
    std::vector<float> out(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      int64_t src = gguf_order ? hf_row_from_gguf_row(r, d) : r;
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += double(w[size_t(src * K + k)]) * x[size_t(k)];
      out[size_t(r)] = float(acc);
    }
    return out;
  };
  for (int pos : {0, 1, 5, 77}) {
    auto q_hf = project(wq, heads * d, false), q_gg = project(wq, heads * d, true);
    auto k_hf = project(wk, kv_heads * d, false), k_gg = project(wk, kv_heads * d, true);
    rope_halves(q_hf, heads, d, pos, inv);
    rope_adjacent(q_gg, heads, d, pos, inv);
    rope_halves(k_hf, kv_heads, d, pos + 3, inv);
    rope_adjacent(k_gg, kv_heads, d, pos + 3, inv);
    for (int64_t r = 0; r < heads * d; ++r)
      ASSERT_NEAR(q_gg[size_t(gguf_row_from_hf_row(r, d))], q_hf[size_t(r)], 1e-4) << "pos " << pos << " row " << r;
    for (int64_t h = 0; h < heads; ++h) {
      double s_hf = 0, s_gg = 0;
      for (int64_t i = 0; i < d; ++i) {
        s_hf += double(q_hf[size_t(h * d + i)]) * k_hf[size_t(i)];
        s_gg += double(q_gg[size_t(h * d + i)]) * k_gg[size_t(i)];
      }
      EXPECT_NEAR(s_gg, s_hf, 1e-3 * (1 + std::fabs(s_hf)));
    }
  }
}
