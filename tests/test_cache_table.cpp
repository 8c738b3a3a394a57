// Tests for framework/attention/cache_table: DeepSeek-V2's Table 1 (and Table 9's
// arithmetic) computed from the registered plugins' own kv_elements_per_token().
#include "attention/cache_table.h"
#include "config/loader.h"

#include <doctest/doctest.h>

#include <string>

using namespace kvlab;

namespace {

const CacheTableRow& row(const std::vector<CacheTableRow>& rows, const std::string& variant) {
    for (const auto& r : rows)
        if (r.variant == variant) return r;
    FAIL("no row for " << variant);
    throw 0;   // unreachable: FAIL throws
}

ModelConfig table9_model() {
    // Appendix D.2's small models: 27 layers, 16 heads × 128, d_c = 512, d_R = 64.
    ModelConfig m;
    m.attention = "mla";
    m.d_model = 2048;
    m.n_layers = 27;
    m.n_heads = 16;
    m.head_dim = 128;
    m.mlp_hidden = 10944;
    m.plugin = {{"kv_lora_rank", 512}, {"qk_rope_head_dim", 64}};
    return m;
}

}  // namespace

TEST_CASE("cache table on DeepSeek-V2's config reproduces Table 1's formulas") {
    // Loads through the normal config loader, which builds (but never sizes weights for)
    // the configured plugin.
    const auto cfg = load_config(std::string(KVLAB_SOURCE_DIR) + "/configs/deepseek_v2.yaml");
    const auto rows = cache_table(cfg.model);
    CHECK(row(rows, "mha").plugin_elements == 2 * 128 * 128 * 60);
    CHECK(row(rows, "gqa").plugin_elements == 2 * 8 * 128 * 60);
    CHECK(row(rows, "mqa").plugin_elements == 2 * 128 * 60);
    CHECK(row(rows, "mla").plugin_elements == (512 + 64) * 60);
    CHECK(row(rows, "mla").plugin_elements * 10 == 45 * 128 * 60);   // = 4.5·d_h·l
    CHECK(row(rows, "mla").per_dh_l == doctest::Approx(4.5));
    CHECK(row(rows, "mha").per_dh_l == doctest::Approx(256));
    for (const char* v : {"mha", "gqa", "mqa", "mla"}) {
        CAPTURE(v);
        CHECK(row(rows, v).skipped.empty());
        CHECK(row(rows, v).formula_elements == row(rows, v).plugin_elements);
        CHECK(row(rows, v).ok());
    }
    CHECK(row(rows, "gqa").substituted == "2·8·128·60");
    CHECK(row(rows, "mla").formula == "(d_c + d_R)·l");
}

TEST_CASE("cache table rows follow Table 1's order, then the other registered plugins") {
    const auto rows = cache_table(table9_model());
    REQUIRE(rows.size() >= 4);
    CHECK(rows[0].variant == "mha");
    CHECK(rows[1].variant == "gqa");
    CHECK(rows[2].variant == "mqa");
    CHECK(rows[3].variant == "mla");
    for (size_t i = 4; i < rows.size(); ++i) CHECK_FALSE(rows[i].in_table1);
}

TEST_CASE("Table 9's arithmetic: 27 layers, 16 heads x 128 under MHA against MLA with d_c 512, d_R 64") {
    const auto rows = cache_table(table9_model());
    CHECK(row(rows, "mha").plugin_elements == 110592);   // 2·16·128·27 (the paper: 110.6K)
    CHECK(row(rows, "mla").plugin_elements == 15552);    // 576·27      (the paper: 15.6K)
    CHECK(row(rows, "mha").ok());
    CHECK(row(rows, "mla").ok());
}

TEST_CASE("a variant whose keys are missing is skipped with a note naming the key") {
    auto m = table9_model();   // no n_kv_heads
    const auto gqa = row(cache_table(m), "gqa");
    CHECK_FALSE(gqa.ok());
    CHECK(gqa.skipped.find("model.n_kv_heads") != std::string::npos);

    m.plugin.erase("qk_rope_head_dim");
    const auto rows = cache_table(m);
    CHECK(row(rows, "mla").skipped.find("model.qk_rope_head_dim") != std::string::npos);
    CHECK(row(rows, "mha").ok());   // the others are unaffected
}

TEST_CASE("a variant whose factory rejects the dimensions is skipped with the plugin's message") {
    auto m = table9_model();
    m.plugin["n_kv_heads"] = 3;   // 16 heads are not divisible into 3 groups
    const auto gqa = row(cache_table(m), "gqa");
    CHECK(gqa.skipped.find("divisible") != std::string::npos);
}
