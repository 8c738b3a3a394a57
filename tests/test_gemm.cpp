// The model's GEMM (core/gemm.h) and absorbed MLA's decode kernels (attention/latent_kernels.h)
// against products computed in double: every transposition, accumulation, strided blocks,
// odd sizes, calls from inside OpenMP parallel regions; the backend choice and its errors.
#include "attention/latent_kernels.h"
#include "core/gemm.h"
#include "support/harness.h"
#include "support/process.h"

#include <omp.h>

#include <cmath>
#include <limits>
#include <vector>

using namespace kvlab;
using namespace kvlab::test;

namespace {

// max |got - want| / max |want|
double rel_diff(const MatD& got, const MatD& want) {
    return (got - want).cwiseAbs().maxCoeff() / std::max(want.cwiseAbs().maxCoeff(), 1e-300);
}

}  // namespace

TEST_CASE("gemm: nt, nn and tn, set and add, on strided blocks, equal the products in double") {
    Rng rng(5);
    struct Shape {
        int m, n, k;
    };
    // From below the BLAS threshold (Eigen) to above it (the backend), odd everywhere.
    for (const Shape s : {Shape{3, 2, 5}, Shape{17, 9, 31}, Shape{65, 130, 47}, Shape{200, 33, 129}}) {
        for (int kind = 0; kind < 3; ++kind)
            for (const bool add : {false, true}) {
                CAPTURE(s.m);
                CAPTURE(s.n);
                CAPTURE(s.k);
                CAPTURE(kind);
                CAPTURE(add);
                const int ar = kind == 2 ? s.k : s.m, ac = kind == 2 ? s.m : s.k;
                const int br = kind == 0 ? s.n : s.k, bc = kind == 0 ? s.k : s.n;
                // operands are blocks inside larger matrices: strides differ from widths
                Mat Abig = random_mat<float>(ar + 2, ac + 5, rng), Bbig = random_mat<float>(br + 1, bc + 7, rng);
                Mat Cbig = random_mat<float>(s.m + 3, s.n + 4, rng);
                const Mat C0 = Cbig;
                auto A = Abig.block(1, 2, ar, ac);
                auto B = Bbig.block(1, 3, br, bc);
                auto C = Cbig.block(2, 1, s.m, s.n);
                const MatD Ad = A.cast<double>(), Bd = B.cast<double>();
                MatD want = kind == 0 ? MatD(Ad * Bd.transpose()) : kind == 1 ? MatD(Ad * Bd) : MatD(Ad.transpose() * Bd);
                if (add) want += C0.block(2, 1, s.m, s.n).cast<double>();
                const gemm::Acc acc = add ? gemm::add : gemm::set;
                if (kind == 0) gemm::nt(C, A, B, acc);
                else if (kind == 1) gemm::nn(C, A, B, acc);
                else gemm::tn(C, A, B, acc);
                CHECK(rel_diff(C.cast<double>(), want) < 1e-5);
                // nothing outside the block changed
                Mat outside = Cbig;
                outside.block(2, 1, s.m, s.n) = C0.block(2, 1, s.m, s.n);
                CHECK(outside == C0);
            }
    }
}

TEST_CASE("gemm: double products, and concurrent calls from one parallel region, are exact to rounding") {
    Rng rng(6);
    const MatD A = random_mat<double>(96, 80, rng), B = random_mat<double>(70, 80, rng);
    MatD C(96, 70);
    gemm::nt(C, A, B);
    CHECK(rel_diff(C, A * B.transpose()) < 1e-13);
    // Each thread of a region runs its own product, as the attention loops do.
    const Mat Af = A.cast<float>(), Bf = B.cast<float>();
    std::vector<Mat> out(4, Mat(96, 70));
#pragma omp parallel for num_threads(2) schedule(static, 1)
    for (int i = 0; i < 4; ++i) gemm::nt(out[size_t(i)], Af, Bf);
    for (const auto& o : out) CHECK(rel_diff(o.cast<double>(), A * B.transpose()) < 1e-5);
}

TEST_CASE("gemm: the backend is reported with its reason, and the core type follows the CPU's features") {
    const gemm::Info& info = gemm::init();
    INFO(info.describe());
    CHECK(!info.why.empty());
    CHECK(info.describe().find(info.why) != std::string::npos);
    const std::string core = gemm::cpu_core_type();
    CHECK((core == "" || core == "SkylakeX" || core == "Haswell"));
    if (info.backend == gemm::Backend::openblas) {
        CHECK(!info.library.empty());
        CHECK(!info.core.empty());
        if (std::getenv("KVLAB_OPENBLAS_CORETYPE") == nullptr) CHECK(info.requested == core);
    }
}

TEST_CASE("KVLAB_GEMM: eigen is honoured, an unknown value is an error naming the variable") {
    TempDir tmp;
    const auto eig = run_shell(fmt::format("KVLAB_GEMM=eigen '{}' bench --config small --plugins mha --threads 1 "
                                           "--parts gemm",
                                           KVLAB_BINARY));
    INFO(eig.output);
    CHECK(eig.status == 0);
    CHECK(eig.output.find(" GEMM (KVLAB_GEMM=eigen)") != std::string::npos);   // any Eigen version
    const auto bad = run_shell(fmt::format("KVLAB_GEMM=mkl '{}' list", KVLAB_BINARY));
    INFO(bad.output);
    CHECK(bad.status == 2);
    CHECK(bad.output.find("KVLAB_GEMM=\"mkl\": allowed are auto (the default), openblas and eigen") !=
          std::string::npos);
    // A library that is not there: auto falls back to Eigen and says why; openblas is an error.
    const auto missing = run_shell(fmt::format("KVLAB_OPENBLAS_LIB={} '{}' bench --config small --plugins mha "
                                               "--threads 1 --parts gemm",
                                               tmp / "nope.so", KVLAB_BINARY));
    INFO(missing.output);
    CHECK(missing.status == 0);
    CHECK(missing.output.find("cannot load " + (tmp / "nope.so")) != std::string::npos);
    const auto forced = run_shell(fmt::format("KVLAB_GEMM=openblas KVLAB_OPENBLAS_LIB={} '{}' bench --config small "
                                              "--plugins mha --threads 1 --parts gemm",
                                              tmp / "nope.so", KVLAB_BINARY));
    INFO(forced.output);
    CHECK(forced.status == 2);
    CHECK(forced.output.find("KVLAB_GEMM=openblas: cannot load") != std::string::npos);
}

TEST_CASE("latent kernels: scores and mix over the tiled cache equal the products in double") {
    Rng rng(7);
    // capacities that are and are not multiples of the 32-token tile, latent widths that are
    // not multiples of 16, head counts below, at and above the 8-head block; token ranges
    // that start and end inside tiles
    struct Dims {
        int cap, n, K, dc, H;
    };
    for (const Dims d : {Dims{55, 50, 42, 37, 11}, Dims{7, 7, 16, 16, 3}, Dims{128, 97, 144, 128, 8},
                         Dims{70, 66, 66, 49, 9}}) {
        CAPTURE(d.cap);
        CAPTURE(d.n);
        CAPTURE(d.K);
        CAPTURE(d.H);
        // the cache's values as a plain [K, cap] matrix, and laid out in tiles
        const Mat plain = random_mat<float>(d.K, d.cap, rng), q = random_mat<float>(d.H, d.K, rng);
        std::vector<float> lat(size_t(d.K) * d.cap, std::nanf(""));
        for (int k = 0; k < d.K; ++k)
            for (int t = 0; t < d.cap; ++t) lat[latent::latent_index(d.K, d.cap, k, t)] = plain(k, t);
        for (float v : lat) REQUIRE(!std::isnan(v));   // the layout covers every float once
        const MatD want_s = plain.leftCols(d.n).cast<double>().transpose() * q.cast<double>().transpose();   // [n, H]
        // head-major scores with a leading dimension larger than n, in three token ranges (each
        // range's scores start at its first token's column)
        const int ld_s = d.n + 3;
        std::vector<float> s(size_t(ld_s) * d.H, -7.0f);
        const int s1 = d.n / 3, s2 = 2 * d.n / 3 + 1;
        for (const auto& [a, b] : {std::pair{0, s1}, std::pair{s1, s2}, std::pair{s2, d.n}})
            latent::scores(lat.data(), d.K, d.cap, q.data(), d.K, d.H, a, b, s.data() + a, ld_s);
        MatD got_s(d.n, d.H);
        for (int h = 0; h < d.H; ++h) {
            for (int t = 0; t < d.n; ++t) got_s(t, h) = s[size_t(h) * ld_s + t];
            for (int t = d.n; t < ld_s; ++t) CHECK(s[size_t(h) * ld_s + t] == -7.0f);   // padding untouched
        }
        CHECK(rel_diff(got_s, want_s) < 1e-5);
        // mix over the first dc latents: two ranges of latents, each summed over two token
        // ranges (the second accumulating), as the decode's chunks do
        const MatD want_o = plain.topLeftCorner(d.dc, d.n).cast<double>() * got_s;   // [dc, H]
        const int ld_o = d.dc + 2;
        std::vector<float> o(size_t(ld_o) * d.H, -7.0f);
        const int ksplit = d.dc / 2 + 1, tsplit = d.n / 2 + 3 < d.n ? d.n / 2 + 3 : d.n;
        for (const auto& [ka, kb] : {std::pair{0, ksplit}, std::pair{ksplit, d.dc}}) {
            latent::mix(lat.data(), d.K, d.cap, 0, tsplit, s.data(), ld_s, d.H, ka, kb, o.data(), ld_o);
            latent::mix(lat.data(), d.K, d.cap, tsplit, d.n, s.data() + tsplit, ld_s, d.H, ka, kb, o.data(), ld_o, true);
        }
        MatD got_o(d.dc, d.H);
        for (int h = 0; h < d.H; ++h) {
            for (int k = 0; k < d.dc; ++k) got_o(k, h) = o[size_t(h) * ld_o + k];
            for (int k = d.dc; k < ld_o; ++k) CHECK(o[size_t(h) * ld_o + k] == -7.0f);
        }
        CHECK(rel_diff(got_o, want_o) < 1e-5);
    }
}

TEST_CASE("latent kernels: attend gives each head's online-softmax state over a token range") {
    Rng rng(8);
    // head counts on both sides of the heads-in-lanes path (more than 4 heads with AVX2:
    // 5, 8, 11 and 16 heads, one and two lane groups, padded or not), capacities that are
    // not multiples of the tile, ranges longer than a chunk (256 and 512 tokens), ranges
    // that start and end inside tiles, and an empty one
    struct Dims {
        int cap, K, dc, H, a, b;
    };
    for (const Dims d : {Dims{600, 144, 128, 8, 0, 600}, Dims{600, 144, 128, 8, 32, 577}, Dims{70, 42, 37, 3, 0, 70},
                         Dims{300, 66, 49, 5, 7, 299}, Dims{530, 40, 29, 11, 0, 530}, Dims{90, 48, 30, 16, 33, 90},
                         Dims{64, 20, 13, 4, 0, 64}, Dims{40, 20, 13, 8, 32, 32}}) {
        CAPTURE(d.cap);
        CAPTURE(d.H);
        CAPTURE(d.a);
        CAPTURE(d.b);
        const Mat plain = random_mat<float>(d.K, d.cap, rng);
        const Mat q = random_mat<float>(d.H, d.K, rng) * 0.5f;   // scores of a few units: a peaked softmax
        std::vector<float> lat(size_t(d.K) * d.cap);
        for (int k = 0; k < d.K; ++k)
            for (int t = 0; t < d.cap; ++t) lat[latent::latent_index(d.K, d.cap, k, t)] = plain(k, t);
        const float scale = 0.7f;
        std::vector<float> scratch(latent::attend_scratch(d.H, d.K, d.dc), std::nanf(""));
        std::vector<float> o(size_t(d.H) * d.dc, std::nanf("")), m(d.H, std::nanf("")), l(d.H, std::nanf(""));
        latent::attend(lat.data(), d.K, d.dc, d.cap, q.data(), d.H, d.a, d.b, scale, scratch.data(), o.data(), m.data(),
                       l.data());
        const int n = d.b - d.a;
        if (n == 0) {
            for (int h = 0; h < d.H; ++h) {
                CHECK(m[h] == -std::numeric_limits<float>::infinity());
                CHECK(l[h] == 0.0f);
            }
            for (float v : o) CHECK(v == 0.0f);
            continue;
        }
        // in double: s = q · lat over the range, m = max s·scale, e = exp(s·scale − m), l = Σ e, o = lat e
        const MatD C = plain.middleCols(d.a, n).cast<double>();                  // [K, n]
        const MatD sc = (q.cast<double>() * C) * double(scale);                  // [H, n]
        MatD want_o(d.H, d.dc), got_o(d.H, d.dc);
        for (int h = 0; h < d.H; ++h) {
            const double mh = sc.row(h).maxCoeff();
            const Eigen::RowVectorXd e = (sc.row(h).array() - mh).exp().matrix();
            CHECK(std::abs(m[h] - mh) <= 1e-5 * std::max(1.0, std::abs(mh)));
            CHECK(std::abs(l[h] - e.sum()) <= 1e-5 * e.sum());
            want_o.row(h) = e * C.topRows(d.dc).transpose();
            for (int k = 0; k < d.dc; ++k) got_o(h, k) = o[size_t(h) * d.dc + k];
        }
        CHECK(rel_diff(got_o, want_o) < 1e-5);
        // the same range again gives the same bits (no state kept between calls)
        std::vector<float> o2(o.size()), m2(m.size()), l2(l.size());
        latent::attend(lat.data(), d.K, d.dc, d.cap, q.data(), d.H, d.a, d.b, scale, scratch.data(), o2.data(),
                       m2.data(), l2.data());
        CHECK(o2 == o);
        CHECK(m2 == m);
        CHECK(l2 == l);
    }
}
