// Tensor names: Hugging Face ("model.layers.3.mlp.up_proj.weight") <-> llama.cpp
// ("blk.3.ffn_up.weight"), for the tensors of the Llama and Qwen3 architectures.
#include <cstring>
#include <optional>
#include <string_view>

#include "formats/model_files.h"

namespace shardlm {

namespace {

struct NamePair {
  const char* hf;
  const char* gguf;
};

// Whole-model tensors.
constexpr NamePair kGlobal[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};

// Per-layer tensors, after "model.layers.N." / "blk.N.".
constexpr NamePair kLayer[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};

// "<prefix><N>.<rest>" with N a canonical decimal (no sign, no leading zero): returns N's text
// and sets rest.
std::optional<std::string_view> layer_of(std::string_view name, std::string_view prefix, std::string_view* rest) {
  if (name.substr(0, prefix.size()) != prefix) return std::nullopt;
  name.remove_prefix(prefix.size());
  size_t digits = 0;
  while (digits < name.size() && name[digits] >= '0' && name[digits] <= '9') ++digits;
  if (digits == 0 || digits > 9 || (digits > 1 && name[0] == '0')) return std::nullopt;
  if (digits >= name.size() || name[digits] != '.') return std::nullopt;
  *rest = name.substr(digits + 1);
  return name.substr(0, digits);
}

std::string convert(const std::string& name, bool from_hf) {
  for (const auto& p : kGlobal)
    if (name == (from_hf ? p.hf : p.gguf)) return from_hf ? p.gguf : p.hf;
  std::string_view rest;
  auto layer = layer_of(name, from_hf ? "model.layers." : "blk.", &rest);
  if (!layer) return {};
  for (const auto& p : kLayer)
    if (rest == (from_hf ? p.hf : p.gguf))
      return std::string(from_hf ? "blk." : "model.layers.") + std::string(*layer) + "." + (from_hf ? p.gguf : p.hf);
  return {};
}

}  // namespace

std::string gguf_name_from_hf(const std::string& hf_name) { return convert(hf_name, true); }
std::string hf_name_from_gguf(const std::string& gguf_name) { return convert(gguf_name, false); }

}  // namespace shardlm
