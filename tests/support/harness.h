// Test helpers: small configs for every registered plugin, a standalone plugin with its
// own parameter arena, and finite-difference directional derivatives.
#pragma once

#include "attention/registry.h"
#include "config/experiment_config.h"
#include "core/rng.h"

#include <doctest/doctest.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace kvlab::test {

// A tiny model config for `attention`, with every plugin key set (each plugin reads its own).
inline ModelConfig tiny_model(const std::string& attention, int q_lora_rank = 6, bool tie = false) {
    ModelConfig c;
    c.attention = attention;
    c.vocab_size = 256;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 4;
    c.head_dim = 4;
    c.mlp_hidden = 24;
    c.tie_embeddings = tie;
    c.plugin = {{"n_kv_heads", 2}, {"kv_lora_rank", 8}, {"q_lora_rank", q_lora_rank}, {"qk_rope_head_dim", 4}, {"latent_rank", 6}};
    return c;
}

// The configurations every conformance test runs: each registered plugin, and for
// plugins that own q_lora_rank both with and without query compression.
struct Case {
    std::string label;
    ModelConfig cfg;
};
inline std::vector<Case> all_cases(bool tie = false) {
    std::vector<Case> cases;
    for (const auto& e : attention_registry()) {
        bool has_q = false;
        for (const auto& k : e.own_keys) has_q |= k.name == "q_lora_rank";
        cases.push_back({std::string(e.name), tiny_model(std::string(e.name), 6, tie)});
        if (has_q) cases.push_back({std::string(e.name) + " (q_lora_rank 0)", tiny_model(std::string(e.name), 0, tie)});
    }
    return cases;
}

// One plugin with its own parameter and gradient arenas, aligned as the model's are
// (Eigen peels a head off a vectorised loop by address, so the last bits of a result can
// depend on where a malloc-aligned buffer landed).
template <class S>
struct PluginUnderTest {
    std::unique_ptr<Attention<S>> attn;
    std::vector<ParamSpec> specs;
    std::vector<int64_t> offsets;
    std::vector<S, Eigen::aligned_allocator<S>> theta, grad;

    PluginUnderTest(const ModelConfig& cfg, uint64_t seed) : attn(make_attention<S>(cfg)), specs(attn->param_specs()) {
        int64_t off = 0;
        for (auto& s : specs) offsets.push_back(off), off += s.numel();
        theta.resize(off);
        grad.assign(off, S(0));
        Rng rng(seed);
        // Larger than the default init so attention is far from uniform; gains near 1.
        for (size_t i = 0; i < specs.size(); ++i)
            for (int64_t j = 0; j < specs[i].numel(); ++j)
                theta[offsets[i] + j] = specs[i].shape.size() == 1 ? S(1 + 0.1 * rng.normal()) : S(0.3 * rng.normal());
        ParamViews<S> pv, gv;
        for (size_t i = 0; i < specs.size(); ++i) {
            pv.add(specs[i].name, theta.data() + offsets[i], specs[i].shape);
            gv.add(specs[i].name, grad.data() + offsets[i], specs[i].shape);
        }
        attn->bind(pv, gv);
    }
};

template <class S>
MatT<S> random_mat(Eigen::Index r, Eigen::Index c, Rng& rng, double scale = 1.0) {
    MatT<S> m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = S(scale * rng.normal());
    return m;
}

inline double rel_err(double a, double b) { return std::abs(a - b) / std::max({std::abs(a), std::abs(b), 1e-12}); }

// Max |a − b| / max |b|.
template <class A, class B>
double max_rel_diff(const A& a, const B& b) {
    return double((a - b).cwiseAbs().maxCoeff()) / std::max(double(b.cwiseAbs().maxCoeff()), 1e-30);
}

}  // namespace kvlab::test
