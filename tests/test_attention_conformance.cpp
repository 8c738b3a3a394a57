// Conformance tests that iterate the attention registry: a new plugin gets all of them
// by adding its registry line. Tiny shapes: B=2, T=5, D=16, H=4.
#include "support/harness.h"

#include <omp.h>

#include <set>

using namespace kvlab;
using namespace kvlab::test;

TEST_CASE("every plugin's parameter names are unique and match the registry name") {
    for (const auto& c : all_cases()) {
        CAPTURE(c.label);
        auto a = make_attention<float>(c.cfg);
        CHECK(a->name() == c.cfg.attention);
        std::set<std::string> names;
        for (auto& s : a->param_specs()) {
            CHECK(names.insert(s.name).second);
            CHECK(s.numel() > 0);
        }
        CHECK(names.count("wo") == 1);
    }
}

TEST_CASE("every plugin's gradients match finite differences in double") {
    const int B = 2, T = 5;
    for (const auto& c : all_cases()) {
        CAPTURE(c.label);
        PluginUnderTest<double> p(c.cfg, 11);
        Rng rng(5);
        const int D = c.cfg.d_model;
        MatD x = random_mat<double>(B * T, D, rng), R = random_mat<double>(B * T, D, rng), out(B * T, D), dx(B * T, D);
        // loss = Σ out ⊙ R  ⇒  dout = R
        auto loss = [&]() {
            p.attn->forward(B, T, x, out);
            return (out.array() * R.array()).sum();
        };
        loss();
        std::fill(p.grad.begin(), p.grad.end(), 0.0);
        p.attn->backward(R, dx);
        const double eps = 1e-5;
        for (size_t i = 0; i < p.specs.size(); ++i) {
            CAPTURE(p.specs[i].name);
            const int64_t n = p.specs[i].numel(), off = p.offsets[i];
            std::vector<double> v(n), saved(p.theta.begin() + off, p.theta.begin() + off + n);
            double analytic = 0;
            for (int64_t j = 0; j < n; ++j) v[j] = rng.normal(), analytic += p.grad[off + j] * v[j];
            for (int64_t j = 0; j < n; ++j) p.theta[off + j] = saved[j] + eps * v[j];
            const double lp = loss();
            for (int64_t j = 0; j < n; ++j) p.theta[off + j] = saved[j] - eps * v[j];
            const double lm = loss();
            std::copy(saved.begin(), saved.end(), p.theta.begin() + off);
            const double numeric = (lp - lm) / (2 * eps);
            CHECK(rel_err(analytic, numeric) < 1e-6);
            // The check resolves a 1% error in this tensor's gradient by a wide margin.
            CHECK(rel_err(1.01 * analytic, numeric) > 1e-3);
        }
        // the input gradient
        MatD v = random_mat<double>(B * T, D, rng);
        const double analytic = (dx.array() * v.array()).sum();
        const MatD x0 = x;
        x = x0 + eps * v;
        const double lp = loss();
        x = x0 - eps * v;
        const double lm = loss();
        x = x0;
        CHECK(rel_err(analytic, (lp - lm) / (2 * eps)) < 1e-6);
    }
}

TEST_CASE("every plugin is causal") {
    const int B = 2, T = 5;
    for (const auto& c : all_cases()) {
        CAPTURE(c.label);
        PluginUnderTest<double> p(c.cfg, 3);
        Rng rng(9);
        MatD x = random_mat<double>(B * T, c.cfg.d_model, rng), out1(B * T, c.cfg.d_model), out2 = out1;
        p.attn->forward(B, T, x, out1);
        for (int t = 0; t + 1 < T; ++t) {
            MatD x2 = x;
            for (int b = 0; b < B; ++b) x2.row(b * T + t + 1).array() += 1.0;
            p.attn->forward(B, T, x2, out2);
            for (int b = 0; b < B; ++b) {
                CHECK(max_rel_diff(out2.middleRows(b * T, t + 1), out1.middleRows(b * T, t + 1)) < 1e-14);
                CHECK(max_rel_diff(out2.row(b * T + t + 1), out1.row(b * T + t + 1)) > 1e-6);
            }
        }
    }
}

TEST_CASE("every plugin's decode reproduces its forward, for each decode implementation") {
    const int B = 1, T = 7;
    for (const auto& c : all_cases()) {
        PluginUnderTest<float> p(c.cfg, 21);
        Rng rng(4);
        Mat x = random_mat<float>(T, c.cfg.d_model, rng), out(T, c.cfg.d_model);
        p.attn->forward(B, T, x, out);
        for (const auto& impl : p.attn->decode_impls()) {
            CAPTURE(c.label);
            CAPTURE(impl);
            auto cache = p.attn->new_decode_cache(T, impl);
            Mat o(1, c.cfg.d_model);
            for (int t = 0; t < T; ++t) {
                p.attn->decode_step(*cache, x.row(t), o);
                CHECK(cache->length == t + 1);
                CHECK(max_rel_diff(o, out.row(t)) <= 1e-4);
            }
        }
    }
}

// Decode shares its work out between OpenMP threads only above a size (ops::kParallelMatvec
// elements per product, or per step of attention over the cache): at D = 128 and 300 cached
// tokens every split path runs, and must give the forward's outputs and the one-thread ones.
// In float with AVX-512 or AVX2, absorbed MLA runs the kernels of latent_kernels.h (with
// AVX2, 4 heads take the head-major kernels and 8 the heads-in-lanes ones; 300 tokens on one
// thread cross a 256-token chunk); in double it runs the Eigen products every other build
// uses, so both scalar types are checked.
template <class S>
void check_decode_split(double vs_forward, double vs_one_thread) {
    const int B = 1, T = 300;
    const int saved = omp_get_max_threads();
    std::vector<Case> cases;
    for (const auto& base : all_cases())
        for (const int heads : {4, 8}) {
            Case c = base;
            c.label += fmt::format(", {} heads", heads);
            c.cfg.d_model = 128;
            c.cfg.n_heads = heads;
            c.cfg.head_dim = 128 / heads;
            for (auto& [k, v] : c.cfg.plugin) {
                if (k == "kv_lora_rank") v = 112;
                if (k == "qk_rope_head_dim") v = 16;
                if (k == "q_lora_rank" && v > 0) v = 96;
                if (k == "latent_rank") v = 48;
            }
            cases.push_back(c);
        }
    for (const auto& c : cases) {
        PluginUnderTest<S> p(c.cfg, 21);
        for (auto& w : p.theta) w *= S(0.5);   // D = 128: keep the scores in softmax's sensitive range
        Rng rng(4);
        MatT<S> x = random_mat<S>(T, c.cfg.d_model, rng), out(T, c.cfg.d_model);
        omp_set_num_threads(1);
        p.attn->forward(B, T, x, out);
        for (const auto& impl : p.attn->decode_impls()) {
            CAPTURE(c.label);
            CAPTURE(impl);
            std::vector<MatT<S>> per_threads;
            for (int threads : {1, 2}) {
                omp_set_num_threads(threads);
                auto cache = p.attn->new_decode_cache(T, impl);
                MatT<S> o(1, c.cfg.d_model), all(T, c.cfg.d_model);
                for (int t = 0; t < T; ++t) {
                    p.attn->decode_step(*cache, x.row(t), o);
                    all.row(t) = o;
                }
                CHECK(max_rel_diff(all, out) <= vs_forward);
                per_threads.push_back(all);
            }
            CHECK(max_rel_diff(per_threads[1], per_threads[0]) <= vs_one_thread);
        }
    }
    omp_set_num_threads(saved);
}

TEST_CASE("every plugin's decode reproduces its forward when its work is split between two threads") {
    check_decode_split<float>(1e-4, 1e-5);
}

TEST_CASE("every plugin's decode in double reproduces its forward, split between two threads or not") {
    check_decode_split<double>(1e-10, 1e-12);
}

TEST_CASE("every plugin's decode cache allocates exactly its KV elements per token") {
    for (const auto& c : all_cases()) {
        CAPTURE(c.label);
        auto a = make_attention<float>(c.cfg);
        for (const auto& impl : a->decode_impls()) {
            CAPTURE(impl);
            for (int T : {1, 17, 256}) CHECK(a->new_decode_cache(T, impl)->bytes() == T * a->kv_elements_per_token() * 4);
        }
        auto d = make_attention<double>(c.cfg);
        CHECK(d->new_decode_cache(9)->bytes() == 9 * d->kv_elements_per_token() * 8);
    }
}

TEST_CASE("the KV elements per token follow model.md's formulas") {
    const auto cfg = tiny_model("mha");
    const int dh = cfg.head_dim, H = cfg.n_heads;
    CHECK(make_attention<float>(tiny_model("mha"))->kv_elements_per_token() == 2 * H * dh);
    CHECK(make_attention<float>(tiny_model("gqa"))->kv_elements_per_token() == 2 * 2 * dh);
    CHECK(make_attention<float>(tiny_model("mqa"))->kv_elements_per_token() == 2 * dh);
}

TEST_CASE("impossible attention dimensions are config errors naming the key") {
    auto c = tiny_model("gqa");
    c.plugin["n_kv_heads"] = 3;
    CHECK_THROWS_WITH_AS(make_attention<float>(c), doctest::Contains("model.n_kv_heads"), ConfigError);
    c.plugin.erase("n_kv_heads");
    CHECK_THROWS_WITH_AS(make_attention<float>(c), doctest::Contains("n_kv_heads"), ConfigError);
    c.attention = "gqa2";
    CHECK_THROWS_WITH_AS(make_attention<float>(c), doctest::Contains("registered: mha, gqa, mqa"), ConfigError);
}
