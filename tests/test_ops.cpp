// Finite-difference checks of every op's hand-written backward, in double, RoPE's
// defining properties, and decoding's matrix-vector products split between threads.
#include "attention/rope.h"
#include "attention/sdpa.h"
#include "model/ops.h"
#include "support/harness.h"

#include <omp.h>

using namespace kvlab;
using namespace kvlab::test;

namespace {
// Central-difference directional derivative of f along v, applied to X in place.
double fd(MatD& X, const MatD& v, const std::function<double()>& f, double eps = 1e-6) {
    const MatD X0 = X;
    X = X0 + eps * v;
    const double lp = f();
    X = X0 - eps * v;
    const double lm = f();
    X = X0;
    return (lp - lm) / (2 * eps);
}
double dot(const MatD& a, const MatD& b) { return (a.array() * b.array()).sum(); }
}  // namespace

TEST_CASE("rmsnorm backward matches finite differences") {
    Rng rng(1);
    const int N = 6, D = 10;
    MatD x = random_mat<double>(N, D, rng), g = random_mat<double>(1, D, rng), R = random_mat<double>(N, D, rng);
    MatD y(N, D), dx(N, D), work(N, D), dg = MatD::Zero(1, D);
    std::vector<double> r(N);
    auto f = [&]() {
        ops::rmsnorm_forward<double>(x, g.data(), 1e-6, y, r.data());
        return dot(y, R);
    };
    f();
    ops::rmsnorm_backward<double>(x, g.data(), r.data(), R, dx, dg.data(), work);
    MatD v = random_mat<double>(N, D, rng), vg = random_mat<double>(1, D, rng);
    CHECK(rel_err(dot(dx, v), fd(x, v, f)) < 1e-7);
    CHECK(rel_err(dot(dg, vg), fd(g, vg, f)) < 1e-7);
    // forward: unit mean square before the gain
    ops::rmsnorm_forward<double>(x, MatD::Ones(1, D).eval().data(), 0.0, y, r.data());
    CHECK(y.row(2).squaredNorm() / D == doctest::Approx(1.0));
}

TEST_CASE("swiglu backward matches finite differences") {
    Rng rng(2);
    const int N = 5, F = 7;
    MatD a = random_mat<double>(N, F, rng, 2.0), b = random_mat<double>(N, F, rng), R = random_mat<double>(N, F, rng);
    MatD h(N, F), da(N, F), db(N, F);
    auto f = [&]() {
        ops::swiglu_forward<double>(a, b, h);
        return dot(h, R);
    };
    f();
    ops::swiglu_backward<double>(a, b, R, da, db);
    MatD va = random_mat<double>(N, F, rng), vb = random_mat<double>(N, F, rng);
    CHECK(rel_err(dot(da, va), fd(a, va, f)) < 1e-7);
    CHECK(rel_err(dot(db, vb), fd(b, vb, f)) < 1e-7);
}

TEST_CASE("cross-entropy ignores -1 targets and its backward matches finite differences") {
    Rng rng(3);
    const int N = 6, V = 9;
    MatD logits = random_mat<double>(N, V, rng, 3.0), probs(N, V), dl(N, V);
    std::vector<int32_t> tg = {1, -1, 8, 0, -1, 4};
    std::vector<double> rl(N);
    int64_t n = 0;
    auto f = [&]() { return ops::cross_entropy_forward<double>(logits, tg.data(), probs, rl.data(), n) / double(n); };
    const double loss = f();
    CHECK(n == 4);
    double ref = 0;
    for (int i = 0; i < N; ++i)
        if (tg[i] >= 0) ref -= logits(i, tg[i]) - std::log(logits.row(i).array().exp().sum());
    CHECK(loss == doctest::Approx(ref / 4).epsilon(1e-12));
    ops::cross_entropy_backward<double>(probs, tg.data(), n, dl);
    CHECK(dl.row(1).cwiseAbs().sum() == 0.0);
    MatD v = random_mat<double>(N, V, rng);
    CHECK(rel_err(dot(dl, v), fd(logits, v, f)) < 1e-7);
}

TEST_CASE("rope is the half-split rotation and its inverse undoes it") {
    Rope<double> rope(8, 10000.0);
    rope.ensure(4);
    MatD u(1, 8);
    u << 1, 2, 3, 4, 5, 6, 7, 8;
    MatD r = u;
    rope.apply(r.data(), 1, 3);
    for (int j = 0; j < 4; ++j) {
        const double th = 3 * std::pow(10000.0, -2.0 * j / 8);
        CHECK(r(0, j) == doctest::Approx(u(0, j) * std::cos(th) - u(0, j + 4) * std::sin(th)));
        CHECK(r(0, j + 4) == doctest::Approx(u(0, j + 4) * std::cos(th) + u(0, j) * std::sin(th)));
    }
    CHECK(r.norm() == doctest::Approx(u.norm()));
    rope.apply(r.data(), 1, 3, true);
    CHECK(max_rel_diff(r, u) < 1e-14);
    // beyond the tables: the same values as the tables would give
    MatD a = u, b = u;
    rope.apply(a.data(), 1, 3);
    Rope<double> small(8, 10000.0);
    small.apply(b.data(), 1, 3);
    CHECK((a - b).cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("causal attention backward matches finite differences") {
    Rng rng(4);
    const int T = 6, d = 4, dv = 3;
    MatD q = random_mat<double>(T, d, rng), k = random_mat<double>(T, d, rng), v = random_mat<double>(T, dv, rng);
    MatD R = random_mat<double>(T, dv, rng), P(T, T), o(T, dv), dP(T, T), dq(T, d), dk = MatD::Zero(T, d),
         dvv = MatD::Zero(T, dv);
    const double scale = 0.7;
    auto f = [&]() {
        sdpa_forward<double>(q, k, v, scale, P, o);
        return dot(o, R);
    };
    f();
    CHECK(P(0, 0) == doctest::Approx(1.0));
    CHECK(P(2, 3) == 0.0);
    sdpa_backward<double>(q, k, v, P, R, scale, dP, dq, dk, dvv);
    MatD vq = random_mat<double>(T, d, rng), vk = random_mat<double>(T, d, rng), vv = random_mat<double>(T, dv, rng);
    CHECK(rel_err(dot(dq, vq), fd(q, vq, f)) < 1e-7);
    CHECK(rel_err(dot(dk, vk), fd(k, vk, f)) < 1e-7);
    CHECK(rel_err(dot(dvv, vv), fd(v, vv, f)) < 1e-7);
}

// Decoding's products in one parallel region: the rows of several weights split between
// threads wherever the split falls (inside a part, at a part's edge), against each product
// computed alone; and the one-region SwiGLU MLP against its three steps. Sizes above
// ops::kParallelMatvec so that two threads really split them.
TEST_CASE("decode products of one input in one parallel region equal the products alone") {
    Rng rng(31);
    const int saved = omp_get_max_threads();
    const int C = 96;
    const MatD x = random_mat<double>(1, C, rng);
    // 310 rows: 2 threads split them at 155, the third part's first row; 3 threads at 103
    // and 206, inside the second and the third part
    const MatD w1 = random_mat<double>(100, C, rng), w2 = random_mat<double>(55, C, rng),
               w3 = random_mat<double>(155, C, rng);
    REQUIRE((w1.size() + w2.size() + w3.size()) >= ops::kParallelMatvec);
    const MatD want1 = x * w1.transpose(), want2 = x * w2.transpose(), want3 = x * w3.transpose();
    for (int threads : {1, 2, 3}) {
        CAPTURE(threads);
        omp_set_num_threads(threads);
        MatD o1 = MatD::Constant(1, 100, -7), o2 = MatD::Constant(1, 55, -7), o3 = MatD::Constant(1, 155, -7);
        ops::matvecs_t<double>(x, {{CMapT<double>(w1.data(), 100, C), o1.data()},
                                   {CMapT<double>(w2.data(), 55, C), o2.data()},
                                   {CMapT<double>(w3.data(), 155, C), o3.data()}});
        CHECK(max_rel_diff(o1, want1) < 1e-13);
        CHECK(max_rel_diff(o2, want2) < 1e-13);
        CHECK(max_rel_diff(o3, want3) < 1e-13);
        // the SwiGLU MLP: [a | b] = x w_gateᵀ, h = silu(a) ⊙ b, out = h w_downᵀ
        const int F = 200, D = 90;
        const MatD wg = random_mat<double>(2 * F, C, rng) * 0.2, wd = random_mat<double>(D, F, rng);
        REQUIRE(wd.size() >= ops::kParallelMatvec);
        MatD ab(1, 2 * F), h(1, F), out(1, D);
        ops::mlp_decode<double>(x, CMapT<double>(wg.data(), 2 * F, C), CMapT<double>(wd.data(), D, F), ab, h, out);
        const MatD a = x * wg.topRows(F).transpose(), b = x * wg.bottomRows(F).transpose();
        const MatD want_h = (a.array() / (1 + (-a.array()).exp()) * b.array()).matrix();
        CHECK(max_rel_diff(h, want_h) < 1e-13);
        CHECK(max_rel_diff(out, want_h * wd.transpose()) < 1e-12);
    }
    omp_set_num_threads(saved);
}
