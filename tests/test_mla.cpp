// MLA-specific tests (framework/attention/mla.cpp). The generic registry-wide checks live in
// test_attention_conformance.cpp; these cover what only MLA has: the optional query
// compression, the latent RMSNorms, the shared RoPE key, and weight absorption at decode.
#include "attention/registry.h"
#include "config/experiment_config.h"
#include "core/rng.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kvlab {
namespace {

constexpr int kD = 16, kH = 4, kDh = 6, kDc = 10, kDR = 4;

ModelConfig mla_config(int q_lora_rank) {
    ModelConfig c;
    c.attention = "mla";
    c.d_model = kD;
    c.n_heads = kH;
    c.head_dim = kDh;
    c.plugin["kv_lora_rank"] = kDc;
    c.plugin["q_lora_rank"] = q_lora_rank;
    c.plugin["qk_rope_head_dim"] = kDR;
    return c;
}

// One MLA layer with its own parameter and gradient storage, bound through ParamViews.
// Matrices ~ normal(0, 0.3) (so attention is far from uniform), gains ~ 1 + normal(0, 0.1).
template <class S>
struct Layer {
    std::unique_ptr<Attention<S>> attn;
    std::vector<ParamSpec> specs;
    // per tensor, in param_specs() order; aligned as the model's arenas (Eigen peels a head
    // off a vectorised loop by address: the thread-count test compares bits)
    std::vector<std::vector<S, Eigen::aligned_allocator<S>>> w, g;

    explicit Layer(const ModelConfig& c, uint64_t seed = 1) : attn(make_attention<S>(c)), specs(attn->param_specs()) {
        Rng rng(seed);
        ParamViews<S> pv, gv;
        w.resize(specs.size());
        g.resize(specs.size());
        for (size_t k = 0; k < specs.size(); ++k) {
            const auto n = static_cast<size_t>(specs[k].numel());
            w[k].resize(n);
            g[k].assign(n, S(0));
            for (auto& v : w[k]) v = static_cast<S>(specs[k].decay() ? 0.3 * rng.normal() : 1.0 + 0.1 * rng.normal());
            pv.add(specs[k].name, w[k].data(), specs[k].shape);
            gv.add(specs[k].name, g[k].data(), specs[k].shape);
        }
        attn->bind(pv, gv);
    }
    size_t index(const std::string& name) const {
        for (size_t k = 0; k < specs.size(); ++k)
            if (specs[k].name == name) return k;
        FAIL("no parameter " << name);
        return 0;
    }
    void zero_grads() {
        for (auto& t : g) std::fill(t.begin(), t.end(), S(0));
    }
};

template <class S>
MatT<S> random_mat(Eigen::Index r, Eigen::Index c, Rng& rng) {
    MatT<S> m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(rng.normal());
    return m;
}

// loss = sum(out ⊙ R)
double loss_of(Layer<double>& L, int B, int T, const MatD& x, const MatD& R) {
    MatD out(B * T, kD);
    L.attn->forward(B, T, x, out);
    return out.cwiseProduct(R).sum();
}

// Relative error of the analytic directional derivative `a` against the central difference `n`.
double rel_err(double a, double n) { return std::abs(a - n) / std::max({std::abs(a), std::abs(n), 1e-12}); }

struct GradCheck {
    std::string tensor;   // parameter name, or "din"
    double analytic, numeric;
};

// For every parameter tensor and for the input: ⟨grad, v⟩ for a random direction v against
// (L(θ+εv) − L(θ−εv)) / 2ε. `corrupt` scales the analytic gradient (1.0 = as computed).
std::vector<GradCheck> directional_checks(int q_lora_rank, double corrupt) {
    const int B = 2, T = 5;
    Layer<double> L(mla_config(q_lora_rank));
    Rng rng(7);
    MatD x = random_mat<double>(B * T, kD, rng), R = random_mat<double>(B * T, kD, rng);
    MatD out(B * T, kD), din(B * T, kD);
    L.attn->forward(B, T, x, out);
    L.attn->backward(R, din);   // d loss / d out = R
    const double eps = 1e-5;
    std::vector<GradCheck> res;
    for (size_t k = 0; k < L.specs.size(); ++k) {
        std::vector<double> v(L.w[k].size());
        for (auto& e : v) e = rng.normal();
        double a = 0;
        for (size_t j = 0; j < v.size(); ++j) a += corrupt * L.g[k][j] * v[j];
        const auto w0 = L.w[k];
        for (size_t j = 0; j < v.size(); ++j) L.w[k][j] = w0[j] + eps * v[j];
        const double lp = loss_of(L, B, T, x, R);
        for (size_t j = 0; j < v.size(); ++j) L.w[k][j] = w0[j] - eps * v[j];
        const double lm = loss_of(L, B, T, x, R);
        L.w[k] = w0;
        res.push_back({L.specs[k].name, a, (lp - lm) / (2 * eps)});
    }
    MatD v = random_mat<double>(B * T, kD, rng);
    const double a = corrupt * din.cwiseProduct(v).sum();
    const double lp = loss_of(L, B, T, x + eps * v, R), lm = loss_of(L, B, T, x - eps * v, R);
    res.push_back({"din", a, (lp - lm) / (2 * eps)});
    return res;
}

constexpr double kGradTol = 1e-6;

}  // namespace

TEST_CASE("mla gradients match central differences for every tensor and the input") {
    for (int q_lora_rank : {0, 8}) {
        CAPTURE(q_lora_rank);
        const auto checks = directional_checks(q_lora_rank, 1.0);
        CHECK(checks.size() == (q_lora_rank > 0 ? 11u : 9u));
        for (const auto& c : checks) {
            INFO("tensor " << c.tensor << ": analytic " << c.analytic << ", numeric " << c.numeric << ", rel err "
                           << rel_err(c.analytic, c.numeric));
            CHECK(rel_err(c.analytic, c.numeric) < kGradTol);
        }
    }
}

TEST_CASE("mla gradient check detects a 1% gradient error") {
    for (int q_lora_rank : {0, 8}) {
        CAPTURE(q_lora_rank);
        for (const auto& c : directional_checks(q_lora_rank, 1.01)) {
            CAPTURE(c.tensor);
            CHECK(rel_err(c.analytic, c.numeric) > 100 * kGradTol);
        }
    }
}

TEST_CASE("mla backward writes din and accumulates parameter gradients") {
    const int B = 2, T = 4;
    Layer<double> L(mla_config(8));
    Rng rng(3);
    MatD x = random_mat<double>(B * T, kD, rng), R = random_mat<double>(B * T, kD, rng);
    MatD out(B * T, kD), din1(B * T, kD), din2(B * T, kD);
    L.attn->forward(B, T, x, out);
    L.attn->backward(R, din1);
    const auto once = L.g;
    din2.setConstant(123.0);
    L.attn->backward(R, din2);
    CHECK((din2 - din1).cwiseAbs().maxCoeff() == 0.0);
    for (size_t k = 0; k < once.size(); ++k) {
        CAPTURE(L.specs[k].name);
        double worst = 0;
        for (size_t j = 0; j < once[k].size(); ++j) worst = std::max(worst, std::abs(L.g[k][j] - 2 * once[k][j]));
        CHECK(worst <= 1e-12);
    }
}

#ifdef _OPENMP
TEST_CASE("mla forward and backward do not depend on the thread count") {
    const int B = 3, T = 6;
    Rng rng(5);
    MatT<float> x = random_mat<float>(B * T, kD, rng), R = random_mat<float>(B * T, kD, rng);
    const int saved = omp_get_max_threads();
    std::vector<decltype(Layer<float>::g)> grads;
    std::vector<MatT<float>> outs, dins;
    for (int threads : {1, 3}) {
        omp_set_num_threads(threads);
        Layer<float> L(mla_config(8));
        MatT<float> out(B * T, kD), din(B * T, kD);
        L.attn->forward(B, T, x, out);
        L.attn->backward(R, din);
        outs.push_back(out);
        dins.push_back(din);
        grads.push_back(L.g);
    }
    omp_set_num_threads(saved);
    CHECK(outs[0] == outs[1]);
    CHECK(dins[0] == dins[1]);
    CHECK(grads[0] == grads[1]);
}
#endif

TEST_CASE("mla absorbed and naive decode reproduce forward") {
    const int B = 2, T = 9;
    for (int q_lora_rank : {0, 8}) {
        CAPTURE(q_lora_rank);
        Layer<float> L(mla_config(q_lora_rank));
        Rng rng(11);
        MatT<float> x = random_mat<float>(B * T, kD, rng), out(B * T, kD);
        L.attn->forward(B, T, x, out);
        for (const auto& impl : L.attn->decode_impls()) {
            for (int b = 0; b < B; ++b) {
                CAPTURE(impl);
                CAPTURE(b);
                auto cache = L.attn->new_decode_cache(T, impl);
                MatT<float> y(1, kD);
                for (int t = 0; t < T; ++t) {
                    CAPTURE(t);
                    L.attn->decode_step(*cache, x.row(b * T + t), y);
                    const float err = (y.row(0) - out.row(b * T + t)).norm() / out.row(b * T + t).norm();
                    CHECK(err <= 1e-4f);
                }
                CHECK(cache->length == T);
            }
        }
    }
}

TEST_CASE("mla absorbed and naive decode give the same outputs") {
    const int T = 12;
    for (int q_lora_rank : {0, 8}) {
        CAPTURE(q_lora_rank);
        Layer<double> L(mla_config(q_lora_rank));
        Rng rng(13);
        MatD x = random_mat<double>(T, kD, rng);
        auto absorbed = L.attn->new_decode_cache(T, "absorbed");
        auto naive = L.attn->new_decode_cache(T, "naive");
        auto by_default = L.attn->new_decode_cache(T);
        MatD ya(1, kD), yn(1, kD), yd(1, kD);
        for (int t = 0; t < T; ++t) {
            CAPTURE(t);
            L.attn->decode_step(*absorbed, x.row(t), ya);
            L.attn->decode_step(*naive, x.row(t), yn);
            L.attn->decode_step(*by_default, x.row(t), yd);
            CHECK((ya - yn).norm() <= 1e-12 * yn.norm());
            CHECK(yd == ya);   // absorbed is the default
        }
    }
}

TEST_CASE("mla decode cache holds only c_KV and kR") {
    Layer<float> L(mla_config(8));
    CHECK(L.attn->kv_elements_per_token() == kDc + kDR);
    CHECK(L.attn->decode_impls() == std::vector<std::string>{"absorbed", "naive"});
    for (const char* impl : {"absorbed", "naive", ""}) {
        CAPTURE(impl);
        for (int max_T : {1, 7, 64}) {
            auto cache = L.attn->new_decode_cache(max_T, impl);
            CHECK(cache->bytes() == int64_t{max_T} * (kDc + kDR) * 4);
            CHECK(cache->bytes() == max_T * L.attn->kv_elements_per_token() * int64_t{sizeof(float)});
        }
    }
    CHECK_THROWS_AS(L.attn->new_decode_cache(4, "flash"), Error);
}

TEST_CASE("mla weight absorption: qC_i kC_i^T equals (qC_i W_UK,i) c_KV^T") {
    Layer<double> L(mla_config(0));
    const MapT<double> w_uk(L.w[L.index("w_uk")].data(), kH * kDh, kDc);   // [H*dh, dc], head i = rows i*dh..
    Rng rng(17);
    const int n = 6;
    MatD c_kv = random_mat<double>(n, kDc, rng);                            // [n, dc]
    MatD qc = random_mat<double>(1, kH * kDh, rng);                          // [1, H*dh]
    const MatD kc = c_kv * w_uk.transpose();                                 // [n, H*dh]
    for (int i = 0; i < kH; ++i) {
        CAPTURE(i);
        const MatD direct = qc.middleCols(i * kDh, kDh) * kc.middleCols(i * kDh, kDh).transpose();        // [1, n]
        const MatD q_abs = qc.middleCols(i * kDh, kDh) * w_uk.middleRows(i * kDh, kDh);                 // [1, dc]
        const MatD absorbed = q_abs * c_kv.transpose();                                                  // [1, n]
        CHECK((direct - absorbed).norm() <= 1e-12 * direct.norm());
    }
}

TEST_CASE("mla parameters follow model.md names, shapes and order") {
    using Specs = std::vector<std::pair<std::string, std::vector<int64_t>>>;
    auto names = [](const ModelConfig& c) {
        Specs s;
        for (const auto& p : make_attention<float>(c)->param_specs()) s.push_back({p.name, p.shape});
        return s;
    };
    const int64_t H = kH, dh = kDh, D = kD, dc = kDc, dR = kDR, dcp = 8;
    const Specs kv_tail = {{"w_dkv", {dc, D}}, {"kv_norm", {dc}}, {"w_uk", {H * dh, dc}},
                           {"w_uv", {H * dh, dc}}, {"w_kr", {dR, D}},  {"wo", {D, H * dh}}};
    Specs plain = {{"wq", {H * dh, D}}, {"w_qr", {H * dR, D}}};
    plain.insert(plain.end(), kv_tail.begin(), kv_tail.end());
    Specs compressed = {{"w_dq", {dcp, D}}, {"q_norm", {dcp}}, {"w_uq", {H * dh, dcp}}, {"w_qr", {H * dR, dcp}}};
    compressed.insert(compressed.end(), kv_tail.begin(), kv_tail.end());
    CHECK(names(mla_config(0)) == plain);
    CHECK(names(mla_config(8)) == compressed);
    const auto hp = make_attention<float>(mla_config(8))->hyper_params();
    CHECK(hp == std::vector<std::pair<std::string, double>>{{"kv_lora_rank", dc}, {"q_lora_rank", dcp},
                                                            {"qk_rope_head_dim", dR}});
}

TEST_CASE("mla rejects impossible dimensions with the offending key") {
    auto bad = [](const char* key, double value) {
        ModelConfig c = mla_config(0);
        if (value < -100) c.plugin.erase(key);
        else c.plugin[key] = value;
        return c;
    };
    const double missing = -1000;
    CHECK_THROWS_WITH_AS(make_attention<float>(bad("kv_lora_rank", missing)), doctest::Contains("model.kv_lora_rank"),
                         ConfigError);
    CHECK_THROWS_WITH_AS(make_attention<float>(bad("kv_lora_rank", 0)), doctest::Contains("model.kv_lora_rank"),
                         ConfigError);
    CHECK_THROWS_WITH_AS(make_attention<float>(bad("q_lora_rank", -1)), doctest::Contains("model.q_lora_rank"),
                         ConfigError);
    CHECK_THROWS_WITH_AS(make_attention<float>(bad("qk_rope_head_dim", missing)),
                         doctest::Contains("model.qk_rope_head_dim"), ConfigError);
    CHECK_THROWS_WITH_AS(make_attention<float>(bad("qk_rope_head_dim", 3)), doctest::Contains("model.qk_rope_head_dim"),
                         ConfigError);
    CHECK_NOTHROW(make_attention<float>(bad("q_lora_rank", missing)));   // default 0
}

}  // namespace kvlab
