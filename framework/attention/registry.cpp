// The list of attention plugins. Add a line here (and the source file to CMakeLists.txt);
// the conformance tests, `kvlab list`, config validation and checkpoints pick it up.
#include "attention/registry.h"

#include "config/experiment_config.h"

#include <fmt/format.h>

namespace kvlab {

template <class S> std::unique_ptr<Attention<S>> make_mha(const ModelConfig&);   // mha_family.cpp
template <class S> std::unique_ptr<Attention<S>> make_gqa(const ModelConfig&);   // mha_family.cpp
template <class S> std::unique_ptr<Attention<S>> make_mqa(const ModelConfig&);   // mha_family.cpp
template <class S> std::unique_ptr<Attention<S>> make_mla(const ModelConfig&);   // mla.cpp
template <class S> std::unique_ptr<Attention<S>> make_latent_kv(const ModelConfig&);   // latent_kv.cpp

const std::vector<AttentionEntry>& attention_registry() {
    static const std::vector<AttentionEntry> entries = {
        // name   description                                           own config keys                                   factories
        {"mha", "multi-head attention: every query head has its own K/V head", {}, make_mha<float>, make_mha<double>},
        {"gqa", "grouped-query attention: n_kv_heads K/V heads, each shared by n_heads/n_kv_heads query heads",
         {{"n_kv_heads", "number of K/V heads (divides n_heads)"}}, make_gqa<float>, make_gqa<double>},
        {"mqa", "multi-query attention: one K/V head shared by all query heads", {}, make_mqa<float>, make_mqa<double>},
        {"mla", "multi-head latent attention (DeepSeek-V2): caches a kv_lora_rank latent plus one shared RoPE key",
         {{"kv_lora_rank", "width d_c of the cached joint K/V latent (required, > 0)"},
          {"q_lora_rank", "width d_c' of the query latent; 0 = no query compression (default 0)"},
          {"qk_rope_head_dim", "decoupled RoPE width d_R per head (required, even, > 0)"}},
         make_mla<float>, make_mla<double>},
        {"latent_kv", "MHA/GQA with K and V decompressed from one cached latent_rank-wide latent (post-hoc compression target)",
         {{"latent_rank", "width r of the cached K/V latent (required, > 0)"},
          {"n_kv_heads", "number of K/V heads (divides n_heads; default n_heads)"}},
         make_latent_kv<float>, make_latent_kv<double>},
    };
    return entries;
}

const AttentionEntry& find_attention(std::string_view name) {
    for (const auto& e : attention_registry())
        if (e.name == name) return e;
    std::string names;
    for (const auto& e : attention_registry()) names += (names.empty() ? "" : ", ") + std::string(e.name);
    throw ConfigError("model.attention",
                      fmt::format("unknown plugin \"{}\"; registered: {} (see: kvlab list)", name, names));
}

template <>
std::unique_ptr<Attention<float>> make_attention<float>(const ModelConfig& cfg) {
    return find_attention(cfg.attention).make_float(cfg);
}
template <>
std::unique_ptr<Attention<double>> make_attention<double>(const ModelConfig& cfg) {
    return find_attention(cfg.attention).make_double(cfg);
}

}  // namespace kvlab
