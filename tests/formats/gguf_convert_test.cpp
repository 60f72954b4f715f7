// write_gguf_model from an in-memory model (no Hugging Face reader needed), read back through
// open_gguf_model: hyper-parameters, tokenizer, every tensor byte, llama's Q/K row order and the
// Llama-3 rope_freqs factors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <random>

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/model_files.h"
#include "test_paths.h"

using namespace shardlm;

namespace {

const std::string kG = "\xc4\xa0";  // byte-level space

class MemoryModel final : public ModelFiles {
 public:
  ModelConfig cfg;
  TokenizerSpec spec;

  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, const std::vector<float>& values) {
    TensorView t;
    t.name = name, t.dtype = dtype, t.shape = std::move(shape);
    auto& bytes = storage_.emplace_back(size_t(dtype_bytes(dtype, t.numel())));
    from_f32(dtype, values.data(), bytes.data(), t.numel());
    t.data = bytes.data(), t.nbytes = int64_t(bytes.size());
    order_.push_back(name);
    tensors_[name] = t;
  }
  void add_random(const std::string& name, DType dtype, std::vector<int64_t> shape, std::mt19937& rng) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::normal_distribution<float> dist(0.0f, 0.5f);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = dist(rng);
    add(name, dtype, std::move(shape), v);
  }

  const ModelConfig& config() const override { return cfg; }
  const TensorView* find(const std::string& name) const override {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }
  std::vector<std::string> tensor_names() const override { return order_; }
  TokenizerSpec tokenizer() const override { return spec; }
  std::string description() const override { return "memory model"; }
  int64_t file_bytes() const override { return 0; }

 private:
  std::deque<std::vector<uint8_t>> storage_;
  std::map<std::string, TensorView> tensors_;
  std::vector<std::string> order_;
};

TokenizerSpec tiny_tokenizer(const std::string& pre) {
  TokenizerSpec s;
  s.source = "memory tokenizer";
  for (char c = 'a'; c <= 'z'; ++c) s.vocab.push_back(std::string(1, c));
  s.vocab.push_back("ab");       // 26
  s.vocab.push_back("abc");      // 27
  s.vocab.push_back(kG);         // 28
  s.vocab.push_back(kG + "ab");  // 29
  s.merges = {{"a", "b"}, {"ab", "c"}, {kG, "ab"}};
  s.split_regexes = {gguf_pre_tokenizer_regex(pre)};
  s.ignore_merges = pre == "llama-bpe";
  s.normalize_nfc = pre == "qwen2";
  auto added = [&](int32_t id, const std::string& text, bool special) {
    AddedToken a;
    a.id = id, a.content = text, a.special = special;
    s.added_tokens.push_back(a);
  };
  added(40, "<|begin_of_text|>", true);
  added(41, "<|eot_id|>", true);
  added(42, "<think>", false);
  added(43, "<|fim_prefix|>", false);     // not special, but llama.cpp makes it a control token
  added(44, "\xe2\x96\x81x", false);      // "▁x": llama.cpp stores user-defined tokens with a space
  s.eos_ids = {41};
  return s;
}

// A small Llama: bf16 matrices (any source dtype converts), f32 norms, Llama-3 rope scaling, an
// MLP width (80) that is not a multiple of 32, untied head.
std::unique_ptr<MemoryModel> tiny_llama(uint32_t seed = 1) {
  auto m = std::make_unique<MemoryModel>();
  ModelConfig& c = m->cfg;
  c.arch = Arch::Llama;
  c.vocab_size = 48, c.hidden_size = 64, c.intermediate_size = 80, c.num_layers = 2;
  c.num_heads = 4, c.num_kv_heads = 2, c.head_dim = 16, c.max_position_embeddings = 2048;
  c.rms_norm_eps = 1e-5, c.rope_theta = 500000.0;
  c.rope_scaling = RopeScaling{"llama3", 32.0, 1.0, 4.0, 8192};
  c.bos_token_id = 40;
  c.eos_token_ids = {41};
  m->spec = tiny_tokenizer("llama-bpe");
  std::mt19937 rng(seed);
  const DType bf = DType::BF16;
  m->add_random("model.embed_tokens.weight", bf, {48, 64}, rng);
  for (int l = 0; l < 2; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    m->add_random(p + "input_layernorm.weight", DType::F32, {64}, rng);
    m->add_random(p + "self_attn.q_proj.weight", bf, {64, 64}, rng);
    m->add_random(p + "self_attn.k_proj.weight", bf, {32, 64}, rng);
    m->add_random(p + "self_attn.v_proj.weight", bf, {32, 64}, rng);
    m->add_random(p + "self_attn.o_proj.weight", bf, {64, 64}, rng);
    m->add_random(p + "post_attention_layernorm.weight", DType::BF16, {64}, rng);
    m->add_random(p + "mlp.gate_proj.weight", bf, {80, 64}, rng);
    m->add_random(p + "mlp.up_proj.weight", bf, {80, 64}, rng);
    m->add_random(p + "mlp.down_proj.weight", bf, {64, 80}, rng);
  }
  m->add_random("model.norm.weight", DType::F32, {64}, rng);
  m->add_random("lm_head.weight", bf, {48, 64}, rng);
  return m;
}

// A small Qwen3: heads wider than hidden/heads, q/k norms, tied embeddings.
std::unique_ptr<MemoryModel> tiny_qwen3() {
  auto m = std::make_unique<MemoryModel>();
  ModelConfig& c = m->cfg;
  c.arch = Arch::Qwen3;
  c.vocab_size = 48, c.hidden_size = 64, c.intermediate_size = 96, c.num_layers = 1;
  c.num_heads = 4, c.num_kv_heads = 2, c.head_dim = 32, c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-6, c.rope_theta = 1000000.0;
  c.tie_word_embeddings = true;
  c.bos_token_id = 40;
  c.eos_token_ids = {41};
  m->spec = tiny_tokenizer("qwen2");
  std::mt19937 rng(3);
  m->add_random("model.embed_tokens.weight", DType::F32, {48, 64}, rng);
  const std::string p = "model.layers.0.";
  m->add_random(p + "input_layernorm.weight", DType::F32, {64}, rng);
  m->add_random(p + "self_attn.q_proj.weight", DType::F32, {128, 64}, rng);
  m->add_random(p + "self_attn.k_proj.weight", DType::F32, {64, 64}, rng);
  m->add_random(p + "self_attn.v_proj.weight", DType::F32, {64, 64}, rng);
  m->add_random(p + "self_attn.o_proj.weight", DType::F32, {64, 128}, rng);
  m->add_random(p + "self_attn.q_norm.weight", DType::F32, {32}, rng);
  m->add_random(p + "self_attn.k_norm.weight", DType::F32, {32}, rng);
  m->add_random(p + "post_attention_layernorm.weight", DType::F32, {64}, rng);
  m->add_random(p + "mlp.gate_proj.weight", DType::F32, {96, 64}, rng);
  m->add_random(p + "mlp.up_proj.weight", DType::F32, {96, 64}, rng);
  m->add_random(p + "mlp.down_proj.weight", DType::F32, {64, 96}, rng);
  m->add_random("model.norm.weight", DType::F32, {64}, rng);
  m->add_random("lm_head.weight", DType::F32, {48, 64}, rng);  // present but tied: not written
  return m;
}

// The bytes row `row` of `src` must have after conversion to `dtype`.
std::vector<uint8_t> converted_row(const TensorView& src, int64_t row, DType dtype) {
  const int64_t cols = src.cols();
  std::vector<float> f(static_cast<size_t>(cols));
  to_f32(src.dtype, src.bytes() + row * dtype_bytes(src.dtype, cols), f.data(), cols);
  std::vector<uint8_t> out(static_cast<size_t>(dtype_bytes(dtype, cols)));
  from_f32(dtype, f.data(), out.data(), cols);
  return out;
}

bool is_qk(const std::string& name) {
  return name.find("q_proj") != std::string::npos || name.find("k_proj") != std::string::npos;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(GgufConvert, LlamaQ8RoundTripsConfigTokenizerAndEveryByte) {
  std::string dir = test::scratch_dir("gguf_convert_llama");
  auto src = tiny_llama();
  write_gguf_model(*src, dir + "/m.gguf", DType::Q8_0);
  auto g = open_gguf_model(dir + "/m.gguf");

  const ModelConfig& c = g->config();
  EXPECT_EQ(c.arch, Arch::Llama);
  EXPECT_EQ(c.vocab_size, 48);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 80);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_EQ(c.rms_norm_eps, double(1e-5f));  // GGUF stores f32
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_style, RopeStyle::Adjacent);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 40);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{41}));

  // rope_freqs: 1 for short wavelengths, the factor for long ones, a blend between; dividing the
  // plain frequencies by them gives transformers' llama3 frequencies.
  ASSERT_EQ(c.rope_freq_factors.size(), 8u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(c.rope_freq_factors[size_t(i)], 1.0f) << i;
  for (int i = 5; i < 8; ++i) EXPECT_EQ(c.rope_freq_factors[size_t(i)], 32.0f) << i;
  EXPECT_GT(c.rope_freq_factors[4], 1.0f);
  EXPECT_LT(c.rope_freq_factors[4], 32.0f);
  for (int i = 0; i < 8; ++i) {
    double inv = 1.0 / std::pow(500000.0, 2.0 * i / 16.0);
    double wavelen = 2 * M_PI / inv, expected = inv;
    if (wavelen > 8192.0) expected = inv / 32;
    else if (wavelen >= 2048.0) {
      double smooth = (8192.0 / wavelen - 1.0) / 3.0;
      expected = (1 - smooth) * inv / 32 + smooth * inv;
    }
    EXPECT_NEAR(inv / c.rope_freq_factors[size_t(i)], expected, 2e-6 * expected) << i;
  }

  // Every tensor, under its Hugging Face name, with exactly the converted bytes.
  auto names = g->tensor_names();
  auto src_names = src->tensor_names();
  std::sort(names.begin(), names.end());
  std::sort(src_names.begin(), src_names.end());
  EXPECT_EQ(names, src_names);
  for (const std::string& name : src_names) {
    SCOPED_TRACE(name);
    const TensorView* s = src->find(name);
    const TensorView* t = g->find(name);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->name, name);
    EXPECT_EQ(t->shape, s->shape);
    DType want = s->shape.size() == 1 ? DType::F32 : name.find("down_proj") != std::string::npos ? DType::F16
                                                                                                 : DType::Q8_0;
    ASSERT_EQ(t->dtype, want);
    const int64_t row_bytes = dtype_bytes(want, s->cols());
    const int64_t d = 16;
    for (int64_t r = 0; r < s->rows(); ++r) {
      int64_t from = is_qk(name) ? hf_row_from_gguf_row(r, d) : r;
      auto expected = converted_row(*s, from, want);
      ASSERT_EQ(std::memcmp(t->bytes() + r * row_bytes, expected.data(), expected.size()), 0) << "row " << r;
    }
  }
  // Q/K rows really moved (row 1 of a head is HF row d/2).
  EXPECT_NE(std::memcmp(g->find("model.layers.0.self_attn.q_proj.weight")->bytes() + 68,
                        converted_row(*src->find("model.layers.0.self_attn.q_proj.weight"), 1, DType::Q8_0).data(), 68),
            0);

  // The tokenizer comes back as it went in, with llama.cpp's reading of added tokens.
  TokenizerSpec t = g->tokenizer();
  EXPECT_EQ(t.vocab, src->spec.vocab);
  EXPECT_EQ(t.merges, src->spec.merges);
  EXPECT_EQ(t.split_regexes, src->spec.split_regexes);
  EXPECT_TRUE(t.ignore_merges);
  EXPECT_FALSE(t.normalize_nfc);
  EXPECT_EQ(t.eos_ids, (std::vector<int32_t>{41}));
  std::vector<std::tuple<int32_t, std::string, bool>> added;
  for (const auto& a : t.added_tokens) added.emplace_back(a.id, a.content, a.special);
  EXPECT_EQ(added, (std::vector<std::tuple<int32_t, std::string, bool>>{{40, "<|begin_of_text|>", true},
                                                                        {41, "<|eot_id|>", true},
                                                                        {42, "<think>", false},
                                                                        {43, "<|fim_prefix|>", true},
                                                                        {44, " x", false}}));

  // The raw file: llama.cpp's keys and token encoding, tensors in model order, sizes consistent.
  GgufFile f(dir + "/m.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("general.file_type"), 7);
  EXPECT_EQ(f.get_int("general.quantization_version"), 2);
  EXPECT_EQ(f.get_int("llama.vocab_size"), 48);
  EXPECT_EQ(f.get_int("llama.rope.dimension_count"), 16);
  EXPECT_EQ(f.get_int("llama.attention.key_length"), 16);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), "llama-bpe");
  const auto& tokens = f.get("tokenizer.ggml.tokens")->strings;
  const auto& types = f.get("tokenizer.ggml.token_type")->numbers;
  ASSERT_EQ(tokens.size(), 48u);
  ASSERT_EQ(types.size(), 48u);
  EXPECT_EQ(f.get("tokenizer.ggml.token_type")->gguf_type, uint32_t(kGgufI32));
  EXPECT_EQ(tokens[0], "a");
  EXPECT_EQ(types[0], 1);
  EXPECT_EQ(tokens[29], kG + "ab");
  EXPECT_EQ(tokens[30], "[PAD30]");
  EXPECT_EQ(types[30], 5);
  EXPECT_EQ(tokens[47], "[PAD47]");
  EXPECT_EQ(types[40], 3);
  EXPECT_EQ(types[42], 4);
  EXPECT_EQ(types[43], 3);
  EXPECT_EQ(tokens[44], " x");
  EXPECT_EQ(types[44], 4);
  EXPECT_EQ(f.get("tokenizer.ggml.merges")->strings, (std::vector<std::string>{"a b", "ab c", kG + " ab"}));
  EXPECT_EQ(f.get_int("tokenizer.ggml.bos_token_id"), 40);
  EXPECT_EQ(f.get_int("tokenizer.ggml.eos_token_id"), 41);
  ASSERT_EQ(f.tensors().size(), 22u);  // 21 model tensors + rope_freqs
  EXPECT_EQ(f.tensors().front().name, "rope_freqs.weight");
  EXPECT_EQ(f.tensors()[1].name, "token_embd.weight");
  EXPECT_EQ(f.tensors()[2].name.rfind("blk.0.", 0), 0u);
  EXPECT_EQ(f.tensors()[20].name, "output_norm.weight");
  EXPECT_EQ(f.tensors().back().name, "output.weight");
  EXPECT_EQ(g->file_bytes(), int64_t(f.file_size()));
  EXPECT_NE(g->description().find("m.gguf"), std::string::npos);
}

TEST(GgufConvert, GgufToGgufKeepsRowOrderAndFactors) {
  // A GGUF source is already in llama.cpp's row order: converting it again must not permute twice.
  std::string dir = test::scratch_dir("gguf_convert_again");
  auto src = tiny_llama();
  write_gguf_model(*src, dir + "/a.gguf", DType::Q8_0);
  auto a = open_gguf_model(dir + "/a.gguf");
  write_gguf_model(*a, dir + "/b.gguf", DType::F32);
  auto b = open_gguf_model(dir + "/b.gguf");
  EXPECT_EQ(b->config().rope_freq_factors, a->config().rope_freq_factors);
  EXPECT_EQ(b->tokenizer().added_tokens.size(), a->tokenizer().added_tokens.size());
  for (const std::string& name : a->tensor_names()) {
    SCOPED_TRACE(name);
    const TensorView* ta = a->find(name);
    const TensorView* tb = b->find(name);
    ASSERT_TRUE(tb);
    ASSERT_EQ(tb->dtype, DType::F32);
    std::vector<float> fa(static_cast<size_t>(ta->numel()));
    to_f32(ta->dtype, ta->data, fa.data(), ta->numel());
    ASSERT_EQ(std::memcmp(tb->data, fa.data(), fa.size() * 4), 0);
  }
}

TEST(GgufConvert, Qwen3TiedF32KeepsRowsAndOmitsHead) {
  std::string dir = test::scratch_dir("gguf_convert_qwen3");
  auto src = tiny_qwen3();
  write_gguf_model(*src, dir + "/q.gguf", DType::F32);
  auto g = open_gguf_model(dir + "/q.gguf");
  const ModelConfig& c = g->config();
  EXPECT_EQ(c.arch, Arch::Qwen3);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.rope_style, RopeStyle::Halves);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.rope_freq_factors.empty());
  EXPECT_EQ(c.rms_norm_eps, double(1e-6f));
  EXPECT_EQ(c.rope_theta, 1000000.0);
  EXPECT_EQ(g->find("lm_head.weight"), nullptr);
  GgufFile f(dir + "/q.gguf");
  EXPECT_EQ(f.find("output.weight"), nullptr);
  EXPECT_EQ(f.find("rope_freqs.weight"), nullptr);
  EXPECT_EQ(f.get_int("general.file_type"), 0);
  EXPECT_EQ(f.get("qwen3.vocab_size"), nullptr);  // llama.cpp writes it for llama only
  EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), "qwen2");
  for (const std::string& name : src->tensor_names()) {
    if (name == "lm_head.weight") continue;
    SCOPED_TRACE(name);
    const TensorView* s = src->find(name);
    const TensorView* t = g->find(name);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->dtype, DType::F32);
    ASSERT_EQ(t->nbytes, s->nbytes);
    EXPECT_EQ(std::memcmp(t->data, s->data, size_t(s->nbytes)), 0);  // no permutation for qwen3
  }
  TokenizerSpec t = g->tokenizer();
  EXPECT_TRUE(t.normalize_nfc);
  EXPECT_FALSE(t.ignore_merges);
  EXPECT_EQ(t.split_regexes, src->spec.split_regexes);
}

TEST(GgufConvert, Q4FallsBackToF16ForNarrowRows) {
  std::string dir = test::scratch_dir("gguf_convert_q4");
  auto src = tiny_llama(5);
  write_gguf_model(*src, dir + "/m.gguf", DType::Q4_0);
  auto g = open_gguf_model(dir + "/m.gguf");
  EXPECT_EQ(g->find("model.layers.1.mlp.down_proj.weight")->dtype, DType::F16);
  EXPECT_EQ(g->find("model.layers.1.mlp.up_proj.weight")->dtype, DType::Q4_0);
  EXPECT_EQ(g->find("model.norm.weight")->dtype, DType::F32);
  const TensorView* k = g->find("model.layers.1.self_attn.k_proj.weight");
  const TensorView* ks = src->find("model.layers.1.self_attn.k_proj.weight");
  for (int64_t r = 0; r < 32; ++r) {
    auto expected = converted_row(*ks, hf_row_from_gguf_row(r, 16), DType::Q4_0);
    ASSERT_EQ(std::memcmp(k->bytes() + r * 36, expected.data(), 36), 0) << r;
  }
  GgufFile f(dir + "/m.gguf");
  EXPECT_EQ(f.get_int("general.file_type"), 2);
}

TEST(GgufConvert, UnwritableModelsAreErrors) {
  std::string dir = test::scratch_dir("gguf_convert_errors");
  auto path = dir + "/x.gguf";
  {
    auto m = tiny_llama();
    std::mt19937 rng(1);
    m->add_random("model.layers.0.mlp.experts.0.weight", DType::F32, {4, 4}, rng);
    EXPECT_EQ(error_of([&] { write_gguf_model(*m, path, DType::F16); }),
              "memory model: tensor 'model.layers.0.mlp.experts.0.weight' has no GGUF counterpart for arch llama");
  }
  {
    auto m = tiny_llama();
    m->spec.split_regexes = {"\\s+"};
    EXPECT_NE(error_of([&] { write_gguf_model(*m, path, DType::F16); }).find("has no llama.cpp name"),
              std::string::npos);
  }
  {
    auto m = tiny_llama();
    m->spec.added_tokens.back().id = 48;
    EXPECT_NE(error_of([&] { write_gguf_model(*m, path, DType::F16); }).find("beyond the model's vocab_size 48"),
              std::string::npos);
  }
  {
    auto m = tiny_qwen3();
    m->cfg.tie_word_embeddings = false;
    auto names = m->tensor_names();
    auto untied = std::make_unique<MemoryModel>();
    untied->cfg = m->cfg, untied->spec = m->spec;
    for (const auto& n : names)
      if (n != "lm_head.weight") {
        const TensorView* t = m->find(n);
        std::vector<float> v(static_cast<size_t>(t->numel()));
        to_f32(t->dtype, t->data, v.data(), t->numel());
        untied->add(n, t->dtype, t->shape, v);
      }
    EXPECT_NE(error_of([&] { write_gguf_model(*untied, path, DType::F16); }).find("no lm_head.weight"),
              std::string::npos);
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));
}

TEST(GgufConvert, Qwen3TokenizerJsonSurvivesGguf) {
  // The real Qwen3 tokenizer through GGUF and back: same vocab, merges, pre-tokenizer; added
  // tokens keep ids and text, and llama.cpp's rules decide which are control tokens.
  TokenizerSpec hf = load_tokenizer_json(test::qwen3_tokenizer_dir());
  auto m = std::make_unique<MemoryModel>();
  m->cfg.arch = Arch::Qwen3;
  m->cfg.vocab_size = 151936, m->cfg.hidden_size = 64, m->cfg.intermediate_size = 64, m->cfg.num_layers = 1;
  m->cfg.num_heads = 2, m->cfg.num_kv_heads = 1, m->cfg.head_dim = 32, m->cfg.max_position_embeddings = 40960;
  m->cfg.rope_theta = 1000000.0, m->cfg.tie_word_embeddings = true, m->cfg.bos_token_id = 151643;
  m->spec = hf;
  m->add("model.norm.weight", DType::F32, {64}, std::vector<float>(64, 1.0f));
  std::string dir = test::scratch_dir("gguf_qwen3_tokenizer");
  write_gguf_model(*m, dir + "/t.gguf", DType::F16);

  GgufFile f(dir + "/t.gguf");
  TokenizerSpec g = gguf_tokenizer_spec(f);
  EXPECT_EQ(g.vocab, hf.vocab);
  EXPECT_EQ(g.merges, hf.merges);
  EXPECT_EQ(g.split_regexes, hf.split_regexes);
  EXPECT_EQ(g.normalize_nfc, hf.normalize_nfc);
  EXPECT_EQ(g.ignore_merges, hf.ignore_merges);
  EXPECT_EQ(g.byte_level_add_prefix_space, hf.byte_level_add_prefix_space);
  EXPECT_EQ(g.byte_level_use_regex, hf.byte_level_use_regex);
  ASSERT_EQ(g.added_tokens.size(), hf.added_tokens.size());
  std::vector<std::string> promoted;
  for (size_t k = 0; k < hf.added_tokens.size(); ++k) {
    EXPECT_EQ(g.added_tokens[k].id, hf.added_tokens[k].id);
    EXPECT_EQ(g.added_tokens[k].content, hf.added_tokens[k].content);
    if (g.added_tokens[k].special != hf.added_tokens[k].special) promoted.push_back(g.added_tokens[k].content);
  }
  EXPECT_EQ(promoted, (std::vector<std::string>{"<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                                                "<|repo_name|>", "<|file_sep|>"}));
  // eos from tokenizer_config.json (<|im_end|>), plus <|endoftext|>, which llama.cpp also stops at.
  EXPECT_EQ(hf.eos_ids, (std::vector<int32_t>{151645}));
  EXPECT_EQ(g.eos_ids, (std::vector<int32_t>{151645, 151643}));
  const auto& tokens = f.get("tokenizer.ggml.tokens")->strings;
  ASSERT_EQ(tokens.size(), 151936u);
  EXPECT_EQ(tokens[151669], "[PAD151669]");
  EXPECT_EQ(gguf_model_config(f).vocab_size, 151936);
}
