// DeepSeek-V2's Table 1 computed from the registered plugins (see cache_table.h).
#include "attention/cache_table.h"

#include "attention/registry.h"

#include <fmt/format.h>

#include <tuple>

namespace kvlab {
namespace {

// What the paper's Table 1 says about one variant, and its formula on a config.
struct Table1Entry {
    const char* variant;
    const char* label;
    const char* sharing;
    const char* reduction;
    const char* formula;
    const char* capability;
    std::vector<const char*> needs;   // plugin keys the formula reads
};

const std::vector<Table1Entry>& table1() {
    static const std::vector<Table1Entry> entries = {
        {"mha", "MHA", "1 K/V head per query head", "none: keys and values of every head", "2·n_h·d_h·l", "Strong",
         {}},
        {"gqa", "GQA", "n_heads/n_kv_heads query heads share one K/V head", "fewer K/V heads (n_g of n_h)",
         "2·n_g·d_h·l", "Moderate", {"n_kv_heads"}},
        {"mqa", "MQA", "all query heads share one K/V head", "one K/V head", "2·d_h·l", "Weak", {}},
        {"mla", "MLA", "per-head keys/values decompressed from one shared latent",
         "low-rank joint K/V compression (latent c_KV) + one shared RoPE key kR", "(d_c + d_R)·l", "Stronger",
         {"kv_lora_rank", "qk_rope_head_dim"}},
    };
    return entries;
}

// The formula of `variant` on m's dimensions: {elements, the formula with numbers}.
std::pair<int64_t, std::string> evaluate(const std::string& variant, const ModelConfig& m) {
    const int64_t H = m.n_heads, dh = m.head_dim, L = m.n_layers;
    if (variant == "mha") return {2 * H * dh * L, fmt::format("2·{}·{}·{}", H, dh, L)};
    if (variant == "gqa") {
        const int64_t G = m.plugin_int("n_kv_heads");
        return {2 * G * dh * L, fmt::format("2·{}·{}·{}", G, dh, L)};
    }
    if (variant == "mqa") return {2 * dh * L, fmt::format("2·{}·{}", dh, L)};
    const int64_t dc = m.plugin_int("kv_lora_rank"), dR = m.plugin_int("qk_rope_head_dim");
    return {(dc + dR) * L, fmt::format("({} + {})·{}", dc, dR, L)};
}

// Builds the plugin on m's dimensions and fills row.plugin_elements, or row.skipped.
void measure(CacheTableRow& row, ModelConfig m) {
    m.attention = row.variant;
    try {
        auto a = make_attention<float>(m);   // no weights: the plugin only records its dimensions
        row.plugin_elements = a->kv_elements_per_token() * m.n_layers;
        row.per_dh_l = static_cast<double>(row.plugin_elements) / (static_cast<double>(m.head_dim) * m.n_layers);
    } catch (const ConfigError& e) {
        row.skipped = e.what();
    }
}

}  // namespace

std::vector<CacheTableRow> cache_table(const ModelConfig& model) {
    std::vector<CacheTableRow> rows;
    for (const auto& t : table1()) {
        bool registered = false;
        for (const auto& e : attention_registry()) registered |= e.name == t.variant;
        if (!registered) continue;
        CacheTableRow r;
        r.variant = t.variant;
        r.label = t.label;
        r.sharing = t.sharing;
        r.reduction = t.reduction;
        r.formula = t.formula;
        r.paper_capability = t.capability;
        for (const char* key : t.needs)
            if (!model.has(key))
                r.skipped += fmt::format("{}model.{} is not set", r.skipped.empty() ? "" : "; ", key);
        if (r.skipped.empty()) {
            try {
                std::tie(r.formula_elements, r.substituted) = evaluate(r.variant, model);
                if (r.variant == "gqa" && model.plugin_int("n_kv_heads") > 0)
                    r.sharing += fmt::format(" (here {})", model.n_heads / model.plugin_int("n_kv_heads"));
                measure(r, model);
            } catch (const ConfigError& e) {   // a plugin key that is not an integer
                r.skipped = e.what();
            }
        }
        rows.push_back(std::move(r));
    }
    for (const auto& e : attention_registry()) {
        bool listed = false;
        for (const auto& t : table1()) listed |= e.name == t.variant;
        if (listed) continue;
        CacheTableRow r;
        r.variant = e.name;
        r.label = e.name;
        r.in_table1 = false;
        r.sharing = e.description;
        measure(r, model);
        rows.push_back(std::move(r));
    }
    return rows;
}

}  // namespace kvlab
