// Whole-model tests over every registered plugin: gradients by finite differences in
// double (tied and untied embeddings), decoding through the KV cache, parameter layout.
#include "model/gradcheck.h"
#include "model/transformer.h"
#include "support/harness.h"

using namespace kvlab;
using namespace kvlab::test;

namespace {
void random_tokens(Rng& rng, int n, std::vector<int32_t>& in, std::vector<int32_t>& tg) {
    in.resize(n);
    tg.resize(n);
    for (int i = 0; i < n; ++i) {
        in[i] = static_cast<int32_t>(rng.below(256));
        tg[i] = i % 3 == 1 ? -1 : static_cast<int32_t>(rng.below(256));   // some ignored targets
    }
}
}  // namespace

TEST_CASE("the whole model's gradients match finite differences for every plugin, tied and untied") {
    const int B = 2, T = 5;
    for (bool tie : {false, true})
        for (const auto& c : all_cases(tie)) {
            CAPTURE(c.label);
            CAPTURE(tie);
            Transformer<double> m(c.cfg);
            m.init(1);
            // Break the symmetry of the default init (gains 1) so every gain gradient is exercised.
            Rng rng(2);
            for (int64_t i = 0; i < m.n_params(); ++i) m.param_data()[i] *= 1.0 + 0.5 * rng.normal();
            for (int64_t i = 0; i < m.n_params(); ++i) m.param_data()[i] *= 4.0;   // larger weights: non-trivial attention
            std::vector<int32_t> in, tg;
            random_tokens(rng, B * T, in, tg);
            for (const auto& r : check_gradients(m, in.data(), tg.data(), B, T, 3)) {
                CAPTURE(r.name);
                CHECK(r.rel_error < 1e-5);   // a 1% error is 1e-2
                CHECK(rel_err(1.01 * r.analytic, r.numeric) > 1e-3);   // a 1% error would show
            }
        }
}

TEST_CASE("parameters follow model.md's names and the tied model has no lm_head") {
    Transformer<float> untied(tiny_model("mha", 6, false)), tied(tiny_model("mha", 6, true));
    CHECK(untied.params().front().spec.name == "embed");
    CHECK(untied.params().back().spec.name == "lm_head");
    CHECK(tied.params().back().spec.name == "final_norm");
    CHECK(untied.n_params() - tied.n_params() == 256 * 16);
    CHECK(untied.find("layers.1.attn.wk").spec.shape == std::vector<int64_t>{16, 16});
    CHECK(untied.find("layers.0.mlp.w_down").spec.shape == std::vector<int64_t>{16, 24});
    Transformer<float> g(tiny_model("gqa"));
    CHECK(g.find("layers.0.attn.wk").spec.shape == std::vector<int64_t>{8, 16});
}

TEST_CASE("initialization is normal(0, 0.02) for matrices and 1 for gains, and seeded") {
    Transformer<float> a(tiny_model("mha")), b(tiny_model("mha"));
    a.init(7);
    b.init(7);
    CHECK(std::equal(a.param_data(), a.param_data() + a.n_params(), b.param_data()));
    const auto& e = a.find("embed");
    Eigen::Map<const Eigen::VectorXf> w(a.param_data() + e.offset, e.spec.numel());
    CHECK(std::abs(w.mean()) < 0.002);
    CHECK(std::sqrt(w.squaredNorm() / w.size()) == doctest::Approx(0.02).epsilon(0.05));
    CHECK(a.param_data()[a.find("final_norm").offset] == 1.0f);
}

TEST_CASE("decoding token by token reproduces the full forward's logits for every plugin") {
    const int T = 9;
    for (const auto& c : all_cases()) {
        Transformer<float> m(c.cfg);
        m.init(5);
        Rng rng(6);
        for (int64_t i = 0; i < m.n_params(); ++i) m.param_data()[i] *= 1.0f + 4.0f * float(rng.uniform());
        std::vector<int32_t> in, tg;
        random_tokens(rng, T, in, tg);
        m.forward(in.data(), nullptr, 1, T);
        const Mat full = m.logits();
        for (const auto& impl : m.attention(0).decode_impls()) {
            CAPTURE(c.label);
            CAPTURE(impl);
            auto st = m.new_decode_state(T, impl);
            CHECK(st.bytes() == int64_t(T) * m.kv_elements_per_token() * 4);
            Mat step(1, 256);
            for (int t = 0; t < T; ++t) {
                m.decode_step(st, in[t], step.data());
                CHECK(max_rel_diff(step, full.row(t)) <= 1e-4);
            }
        }
    }
}

TEST_CASE("the loss is independent of how targets are batched and ignores -1 targets") {
    Transformer<double> m(tiny_model("mqa"));
    m.init(3);
    std::vector<int32_t> in = {1, 2, 3, 4, 5, 6}, tg = {2, -1, 4, -1, -1, -1}, all_ignored(6, -1);
    const double l = m.forward(in.data(), tg.data(), 1, 6);
    CHECK(l > 0);
    CHECK(m.forward(in.data(), all_ignored.data(), 1, 6) == 0.0);
    CHECK(std::isfinite(l));
}
