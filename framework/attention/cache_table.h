// DeepSeek-V2's Table 1 (arXiv 2405.04434, section 2.1.4): the KV cache per token of MHA,
// GQA, MQA and MLA, for one config's dimensions. The counts come from the plugins
// themselves (Attention::kv_elements_per_token() × n_layers: every layer has the same
// attention) and are checked against the paper's formula evaluated on the same dimensions.
// Building a plugin allocates no weights (the Transformer does that), so this works for
// full-size configs such as configs/deepseek_v2.yaml. `kvlab cache-table` prints it.
//
// Paper symbols: n_h = n_heads, d_h = head_dim, l = n_layers, n_g = n_kv_heads (gqa),
// d_c = kv_lora_rank, d_R = qk_rope_head_dim (the paper's d_h^R).
#pragma once

#include "config/experiment_config.h"

#include <cstdint>
#include <string>
#include <vector>

namespace kvlab {

struct CacheTableRow {
    std::string variant;            // registry name: "mha", "gqa", "mqa", "mla", or another plugin
    std::string label;              // as the paper writes it: "MHA", ...
    bool in_table1 = true;          // false: another registered plugin, with no paper formula
    std::string sharing;            // which query heads share which K/V (other plugins: the registry description)
    std::string reduction;          // how the variant shrinks the cache
    std::string formula;            // the paper's formula, "2·n_h·d_h·l" ("" when not in Table 1)
    std::string substituted;        // the formula on this config's numbers, "2·128·128·60"
    std::string paper_capability;   // the paper's claim (kvlab exists to measure it)
    int64_t formula_elements = -1;  // the formula evaluated on this config (-1 when not in Table 1)
    int64_t plugin_elements = 0;    // kv_elements_per_token() × n_layers
    double per_dh_l = 0;            // plugin_elements / (d_h·l); MLA in DeepSeek-V2: 4.5
    std::string skipped;            // non-empty: why this variant could not be built from the config

    bool ok() const { return skipped.empty() && (!in_table1 || plugin_elements == formula_elements); }
};

// One row per registered Table 1 variant in the paper's order (mha, gqa, mqa, mla), then
// one per other registered plugin. A variant whose own keys are missing from `model`
// (gqa without n_kv_heads, mla without kv_lora_rank or qk_rope_head_dim), or whose
// factory rejects the dimensions, gets a row with `skipped` saying why.
std::vector<CacheTableRow> cache_table(const ModelConfig& model);

}  // namespace kvlab
