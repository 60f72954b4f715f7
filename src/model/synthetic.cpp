#include "model/synthetic.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "core/process_stats.h"
#include "core/thread_pool.h"
#include "formats/safetensors.h"
#include "formats/tokenizer_spec.h"

namespace shardlm {

namespace fs = std::filesystem;

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct TensorPlan {
  std::string name;
  std::vector<int64_t> shape;
  bool is_norm;
};

std::vector<TensorPlan> tensor_plan(const ModelConfig& c) {
  const int64_t H = c.hidden_size, F = c.intermediate_size, D = c.head_dim;
  std::vector<TensorPlan> plan;
  plan.push_back({"model.embed_tokens.weight", {c.vocab_size, H}, false});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    plan.push_back({p + "input_layernorm.weight", {H}, true});
    plan.push_back({p + "self_attn.q_proj.weight", {c.num_heads * D, H}, false});
    plan.push_back({p + "self_attn.k_proj.weight", {c.num_kv_heads * D, H}, false});
    plan.push_back({p + "self_attn.v_proj.weight", {c.num_kv_heads * D, H}, false});
    plan.push_back({p + "self_attn.o_proj.weight", {H, c.num_heads * D}, false});
    if (c.arch == Arch::Qwen3) {
      plan.push_back({p + "self_attn.q_norm.weight", {D}, true});
      plan.push_back({p + "self_attn.k_norm.weight", {D}, true});
    }
    plan.push_back({p + "post_attention_layernorm.weight", {H}, true});
    plan.push_back({p + "mlp.gate_proj.weight", {F, H}, false});
    plan.push_back({p + "mlp.up_proj.weight", {F, H}, false});
    plan.push_back({p + "mlp.down_proj.weight", {H, F}, false});
  }
  plan.push_back({"model.norm.weight", {H}, true});
  if (!c.tie_word_embeddings) plan.push_back({"lm_head.weight", {c.vocab_size, H}, false});
  return plan;
}

void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  out << j.dump(2) << "\n";
  if (!out) fail("{}: write failed", path);
}

}  // namespace

void fill_normal(float* out, int64_t n, uint64_t stream, int64_t first_index, float mean, float std) {
  // Box-Muller on pairs: pair j yields elements 2j and 2j+1 of the stream.
  for (int64_t i = 0; i < n; ++i) {
    int64_t idx = first_index + i;
    uint64_t r1 = splitmix64(stream ^ splitmix64(uint64_t(idx / 2)));
    uint64_t r2 = splitmix64(r1);
    double u1 = (double(r1 >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    double u2 = double(r2 >> 11) * 0x1.0p-53;
    double radius = std::sqrt(-2.0 * std::log(u1));
    double angle = 2.0 * M_PI * u2;
    double z = (idx % 2 == 0) ? radius * std::cos(angle) : radius * std::sin(angle);
    out[i] = mean + std * float(z);
  }
}

ModelConfig preset_config(Arch arch, const std::string& preset, int64_t vocab_size) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = vocab_size;
  const bool qwen = arch == Arch::Qwen3;
  if (preset == "tiny") {
    c.hidden_size = 256, c.num_layers = 4, c.num_heads = 4, c.num_kv_heads = 2, c.intermediate_size = 768;
    c.head_dim = qwen ? 128 : 64;  // Qwen3 heads are wider than hidden/heads, as in Qwen3-0.6B
    c.max_position_embeddings = 4096;
    c.tie_word_embeddings = qwen;
  } else if (preset == "small") {
    c.hidden_size = 1024, c.num_layers = 8, c.num_heads = 16, c.num_kv_heads = 4, c.intermediate_size = 3072;
    c.head_dim = qwen ? 128 : 64;
    c.max_position_embeddings = 8192;
    c.tie_word_embeddings = qwen;
  } else if (preset == "1b") {  // Llama-3.2-1B's shape
    c.hidden_size = 2048, c.num_layers = 16, c.num_heads = 32, c.num_kv_heads = 8, c.intermediate_size = 8192;
    c.head_dim = 64;
    c.max_position_embeddings = 131072;
    c.tie_word_embeddings = true;
  } else if (preset == "8b") {  // Llama-3.1-8B's shape (its 128256-token vocabulary aside)
    c.hidden_size = 4096, c.num_layers = 32, c.num_heads = 32, c.num_kv_heads = 8, c.intermediate_size = 14336;
    c.head_dim = 128;
    c.max_position_embeddings = 131072;
    c.tie_word_embeddings = false;
  } else {
    fail("unknown preset '{}' (expected tiny, small, 1b or 8b)", preset);
  }
  if (qwen) {
    c.rope_theta = 1000000.0, c.rms_norm_eps = 1e-6;
  } else {  // Llama 3.x: theta 500000 with llama3 frequency scaling
    c.rope_theta = 500000.0, c.rms_norm_eps = 1e-5;
    c.rope_scaling = RopeScaling{"llama3", 32.0, 1.0, 4.0, 8192};
  }
  return c;
}

ModelConfig write_synthetic_model(const SyntheticModelOptions& o) {
  SHARDLM_CHECK(o.dtype == DType::F32 || o.dtype == DType::F16 || o.dtype == DType::BF16,
                "make-model writes f32, f16 or bf16 (got {}); use `shardlm convert` for GGUF quantized files",
                dtype_name(o.dtype));
  SHARDLM_CHECK(!o.out_dir.empty(), "no output folder given");
  TokenizerSpec tok = load_tokenizer_json(o.tokenizer_dir);
  int64_t n_ids = int64_t(tok.vocab.size());
  for (const auto& a : tok.added_tokens) n_ids = std::max<int64_t>(n_ids, a.id + 1);
  // Padded to a multiple of 128 as model vocabularies usually are (Qwen3's 151669 ids -> 151680).
  const int64_t vocab = (n_ids + 127) / 128 * 128;

  ModelConfig c = preset_config(o.arch, o.preset, vocab);
  if (o.tie_embeddings) c.tie_word_embeddings = *o.tie_embeddings;
  if (o.context) c.max_position_embeddings = *o.context;
  c.torch_dtype = o.dtype == DType::F32 ? "float32" : o.dtype == DType::BF16 ? "bfloat16" : "float16";
  auto find_id = [&](const std::string& text) -> std::optional<int64_t> {
    for (const auto& a : tok.added_tokens)
      if (a.content == text) return a.id;
    return std::nullopt;
  };
  c.bos_token_id = find_id("<|endoftext|>");
  for (int32_t id : tok.eos_ids) c.eos_token_ids.push_back(id);
  c.validate("preset " + o.preset);

  fs::create_directories(o.out_dir);
  {
    std::ofstream out(o.out_dir + "/config.json");
    out << hf_config_json(c, o.config_style);
    if (!out) fail("{}/config.json: write failed", o.out_dir);
  }
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
    fs::path src = fs::path(o.tokenizer_dir) / f;
    if (fs::exists(src)) fs::copy_file(src, fs::path(o.out_dir) / f, fs::copy_options::overwrite_existing);
  }

  // Group tensors into shards of at most shard_bytes, in the order transformers writes them.
  std::vector<TensorPlan> plan = tensor_plan(c);
  std::vector<std::vector<size_t>> shards(1);
  int64_t shard_size = 0, total = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    int64_t n = 1;
    for (int64_t d : plan[i].shape) n *= d;
    int64_t bytes = dtype_bytes(o.dtype, n);
    if (shard_size > 0 && shard_size + bytes > o.shard_bytes) shards.emplace_back(), shard_size = 0;
    shards.back().push_back(i);
    shard_size += bytes;
    total += bytes;
  }

  ThreadPool pool(o.threads > 0 ? o.threads : ThreadPool::default_threads());
  Stopwatch clock;
  int64_t written = 0;
  int last_percent = -10;
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    std::string file = shards.size() == 1
                           ? "model.safetensors"
                           : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
    std::vector<TensorToWrite> tensors;
    for (size_t i : shards[s]) {
      const TensorPlan& p = plan[i];
      weight_map[p.name] = file;
      TensorToWrite t{p.name, o.dtype, p.shape, nullptr, {}};
      // Each tensor has its own stream, so its values do not depend on dtype, sharding or threads.
      uint64_t stream = splitmix64(o.seed * 0x100000001b3ull + i);
      t.fill = [&, p, stream, dtype = o.dtype](uint8_t* dst) {
        int64_t n = 1;
        for (int64_t d : p.shape) n *= d;
        pool.parallel_for(n, 1 << 16, [&](int64_t begin, int64_t end) {
          std::vector<float> buf(size_t(std::min<int64_t>(end - begin, 1 << 16)));
          for (int64_t at = begin; at < end; at += int64_t(buf.size())) {
            int64_t m = std::min<int64_t>(int64_t(buf.size()), end - at);
            // Norm weights near 1 (as trained models have), matrices N(0, 0.02).
            fill_normal(buf.data(), m, stream, at, p.is_norm ? 1.0f : 0.0f, 0.02f);
            from_f32(dtype, buf.data(), dst + dtype_bytes(dtype, at), m);
          }
        });
        written += dtype_bytes(dtype, n);
        int percent = int(100 * written / std::max<int64_t>(1, total));
        if (percent >= last_percent + 10) {
          last_percent = percent;
          log_info("make-model: {:3d}% ({:.2f} of {:.2f} GB, {:.1f} s)", percent, written / 1e9, total / 1e9,
                   clock.seconds());
        }
      };
      tensors.push_back(std::move(t));
    }
    write_safetensors(o.out_dir + "/" + file, tensors);
  }
  if (shards.size() > 1) {
    write_json(o.out_dir + "/model.safetensors.index.json",
               {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
  }
  nlohmann::json gen = {{"do_sample", false}};
  if (c.bos_token_id) gen["bos_token_id"] = *c.bos_token_id;
  if (!c.eos_token_ids.empty()) gen["eos_token_id"] = c.eos_token_ids;
  write_json(o.out_dir + "/generation_config.json", gen);
  return c;
}

}  // namespace shardlm
