// Low-rank approximators (framework/lowrank/), run for every registry entry in float and
// double, the latent_kv plugin's specifics, post-hoc compression (lowrank/compress.h) and
// the approx / compress commands.
#include "attention/registry.h"
#include "io/matrix_io.h"
#include "lowrank/compress.h"
#include "lowrank/lowrank.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "support/harness.h"
#include "tasks/task.h"

#include <Eigen/QR>
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sys/wait.h>
#include <unistd.h>

using namespace kvlab;
using namespace kvlab::test;

namespace {

// A [m, n] with the given singular values: U diag(σ) Vᵀ, U, V random orthonormal.
template <class S>
MatT<S> with_spectrum(int m, int n, const std::vector<double>& sigma, Rng& rng) {
    const int p = static_cast<int>(sigma.size());
    const Eigen::MatrixXd Gu = random_mat<double>(m, p, rng), Gv = random_mat<double>(n, p, rng);
    const Eigen::MatrixXd U = Eigen::HouseholderQR<Eigen::MatrixXd>(Gu).householderQ() * Eigen::MatrixXd::Identity(m, p);
    const Eigen::MatrixXd V = Eigen::HouseholderQR<Eigen::MatrixXd>(Gv).householderQ() * Eigen::MatrixXd::Identity(n, p);
    const Eigen::VectorXd s = Eigen::Map<const Eigen::VectorXd>(sigma.data(), p);
    return (U * s.asDiagonal() * V.transpose()).cast<S>();
}

std::vector<double> decaying(int n, double power) {
    std::vector<double> s(n);
    for (int i = 0; i < n; ++i) s[i] = std::pow(i + 1.0, -power);
    return s;
}

template <class S>
constexpr double exact_tol() {
    return std::is_same_v<S, float> ? 1e-4 : 1e-10;
}

}  // namespace

// ---------------------------------------------------------------------------- every method

TEST_CASE_TEMPLATE("every approximator recovers a rank-k matrix exactly, with the documented shapes", S, float, double) {
    const int m = 40, n = 30, k = 6;
    Rng gen(1);
    const MatT<S> A = random_mat<S>(m, k, gen) * random_mat<S>(k, n, gen);   // rank k
    for (const auto& e : lowrank_registry()) {
        CAPTURE(e.name);
        auto approx = make_lowrank(e.name);
        CHECK(approx->name() == e.name);
        Rng rng(3);
        const auto r = approx->approximate(A, k, rng);
        CHECK(r.left.rows() == m);
        CHECK(r.left.cols() == k);
        CHECK(r.right.rows() == k);
        CHECK(r.right.cols() == n);
        CHECK(lowrank::rel_error<S>(A, r) < exact_tol<S>());
        if (e.name == "svd" || e.name == "rsvd") CHECK(r.sigma.size() == k);
        if (e.name == "qrcp") CHECK(r.cols.size() == size_t(k));
        if (e.name == "cur") {
            CHECK(r.cols.size() == size_t(k));
            CHECK(r.rows.size() == size_t(k));
        }
    }
}

TEST_CASE_TEMPLATE("every approximator is at least the Eckart-Young optimum and within its stated factor", S, float,
                   double) {
    // Stated factors on this decaying spectrum (σ_i = i^-1): svd is optimal, rsvd's default
    // power iterations get within 10%; qrcp and cur pick actual columns and pay for it.
    const std::map<std::string, double> factor = {{"svd", 1.0 + 1e-4}, {"rsvd", 1.1}, {"qrcp", 2.0}, {"cur", 3.0}};
    Rng gen(2);
    const MatT<S> A = with_spectrum<S>(120, 90, decaying(90, 1.0), gen);
    for (int k : {5, 20}) {
        const double opt = lowrank::optimal_rel_error<S>(A, k);
        for (const auto& e : lowrank_registry()) {
            CAPTURE(e.name);
            CAPTURE(k);
            Rng rng(4);
            const double err = lowrank::rel_error<S>(A, make_lowrank(e.name)->approximate(A, k, rng));
            INFO("error " << err << ", optimum " << opt << ", ratio " << err / opt);
            CHECK(err >= opt * (1 - 1e-5));
            REQUIRE(factor.count(std::string(e.name)));
            CHECK(err <= opt * factor.at(std::string(e.name)));
        }
    }
}

TEST_CASE_TEMPLATE("every approximator gives the same result for the same seed", S, float, double) {
    Rng gen(5);
    const MatT<S> A = random_mat<S>(50, 35, gen);
    for (const auto& e : lowrank_registry()) {
        CAPTURE(e.name);
        auto approx = make_lowrank(e.name);
        Rng r1(9), r2(9);
        const auto a = approx->approximate(A, 7, r1), b = approx->approximate(A, 7, r2);
        CHECK(a.left == b.left);
        CHECK(a.right == b.right);
        CHECK(a.cols == b.cols);
        CHECK(a.rows == b.rows);
    }
}

TEST_CASE_TEMPLATE("an impossible rank is an error naming k and the shape", S, float, double) {
    Rng gen(6);
    const MatT<S> A = random_mat<S>(12, 9, gen);
    for (const auto& e : lowrank_registry()) {
        CAPTURE(e.name);
        auto approx = make_lowrank(e.name);
        Rng rng(1);
        CHECK_THROWS_WITH_AS(approx->approximate(A, 10, rng), doctest::Contains("k = 10"), Error);
        CHECK_THROWS_WITH_AS(approx->approximate(A, 10, rng), doctest::Contains("[12, 9]"), Error);
        CHECK_THROWS_WITH_AS(approx->approximate(A, 0, rng), doctest::Contains("k = 0"), Error);
        CHECK_NOTHROW(approx->approximate(A, 9, rng));   // k = min(m, n) is allowed
    }
}

TEST_CASE("the registry rejects unknown methods and options, listing what exists") {
    CHECK_THROWS_WITH_AS(make_lowrank("svd2"), doctest::Contains("registered: svd, qrcp, rsvd, cur"), Error);
    CHECK_THROWS_WITH_AS(make_lowrank("svd", {{"oversample", "3"}}), doctest::Contains("options: none"), Error);
    CHECK_THROWS_WITH_AS(make_lowrank("rsvd", {{"oversample", "-1"}}), doctest::Contains("oversample"), Error);
    CHECK_THROWS_WITH_AS(make_lowrank("cur", {{"select", "random"}}), doctest::Contains("qr or leverage"), Error);
    CHECK(parse_lowrank_options("oversample=5,power_iters=2") ==
          LowRankOptions{{"oversample", "5"}, {"power_iters", "2"}});
    CHECK(parse_lowrank_options("").empty());
    CHECK_THROWS_AS(parse_lowrank_options("oversample"), Error);
}

// ---------------------------------------------------------------------------- per method

TEST_CASE_TEMPLATE("svd's error is the norm of the tail singular values", S, float, double) {
    Rng gen(7);
    const auto sigma = decaying(30, 0.7);
    const MatT<S> A = with_spectrum<S>(50, 30, sigma, gen);
    for (int k : {1, 8, 29}) {
        CAPTURE(k);
        Rng rng(1);
        const auto r = make_lowrank("svd")->approximate(A, k, rng);
        double tail = 0, total = 0;
        for (int i = 0; i < 30; ++i) total += sigma[i] * sigma[i], tail += i >= k ? sigma[i] * sigma[i] : 0;
        const double expect = std::sqrt(tail / total), tol = std::is_same_v<S, float> ? 1e-3 : 1e-9;
        CHECK(lowrank::rel_error<S>(A, r) == doctest::Approx(expect).epsilon(tol));
        CHECK(lowrank::optimal_rel_error<S>(A, k) == doctest::Approx(expect).epsilon(tol));
        for (int i = 0; i < k; ++i) CHECK(double(r.sigma(i)) == doctest::Approx(sigma[i]).epsilon(tol));
    }
}

TEST_CASE_TEMPLATE("rsvd with default power iterations is within 1.1 of the optimum on a decaying spectrum", S, float,
                   double) {
    Rng gen(8);
    const MatT<S> A = with_spectrum<S>(300, 200, decaying(200, 0.5), gen);   // slow decay: the hard case
    for (int k : {10, 40}) {   // 10 < 0.1·200: 7 power iterations; 40: 4
        CAPTURE(k);
        Rng rng(11);
        const double err = lowrank::rel_error<S>(A, make_lowrank("rsvd")->approximate(A, k, rng));
        const double opt = lowrank::optimal_rel_error<S>(A, k);
        CHECK(err <= 1.1 * opt);
        // without power iterations the same sketch is clearly worse: the iterations matter
        Rng rng0(11);
        const double err0 =
            lowrank::rel_error<S>(A, make_lowrank("rsvd", {{"power_iters", "0"}})->approximate(A, k, rng0));
        CHECK(err0 > err);
    }
}

TEST_CASE_TEMPLATE("qrcp's pivots are distinct and |diag R| is non-increasing", S, float, double) {
    Rng gen(9);
    const MatT<S> A = with_spectrum<S>(60, 45, decaying(45, 1.0), gen);
    Rng rng(1);
    const int k = 20;
    const auto r = make_lowrank("qrcp")->approximate(A, k, rng);
    CHECK(std::set<int64_t>(r.cols.begin(), r.cols.end()).size() == size_t(k));
    // right = R_k Pᵀ, so R_ii = right(i, cols[i]); R_k is upper triangular in pivoted order
    for (int i = 0; i + 1 < k; ++i) {
        CAPTURE(i);
        CHECK(std::abs(double(r.right(i + 1, r.cols[i + 1]))) <= std::abs(double(r.right(i, r.cols[i]))) * (1 + 1e-5));
        CHECK(double(r.right(i + 1, r.cols[i])) == 0.0);
    }
    // left = Q_k has orthonormal columns
    const MatD QtQ = (r.left.transpose() * r.left).template cast<double>();
    CHECK((QtQ - MatD::Identity(k, k)).cwiseAbs().maxCoeff() < exact_tol<S>());
}

TEST_CASE_TEMPLATE("cur uses actual rows of A and is exact on rank-k input for both selections", S, float, double) {
    const int m = 35, n = 28, k = 5;
    Rng gen(10);
    const MatT<S> A = random_mat<S>(m, k, gen) * random_mat<S>(k, n, gen);
    for (const char* select : {"qr", "leverage"}) {
        CAPTURE(select);
        Rng rng(1);
        const auto r = make_lowrank("cur", {{"select", select}})->approximate(A, k, rng);
        CHECK(lowrank::rel_error<S>(A, r) < exact_tol<S>());
        for (int i = 0; i < k; ++i) CHECK(r.right.row(i) == A.row(r.rows[i]));
        CHECK(std::set<int64_t>(r.cols.begin(), r.cols.end()).size() == size_t(k));
        CHECK(std::set<int64_t>(r.rows.begin(), r.rows.end()).size() == size_t(k));
    }
}

TEST_CASE("read_matrix and write_matrices round-trip a float32 matrix with attributes") {
    const auto file = (std::filesystem::temp_directory_path() / fmt::format("kvlab_lowrank_{}.h5", getpid())).string();
    Rng gen(1);
    const Mat A = random_mat<float>(7, 5, gen), B = random_mat<float>(2, 3, gen);
    write_matrices(file, {{"A", A}, {"B", B}}, {{"method", std::string("svd")}, {"rank", int64_t{3}}});
    CHECK(read_matrix(file, "/A") == A);
    CHECK(read_matrix(file, "B") == B);
    CHECK_THROWS_WITH_AS(read_matrix(file, "/C"), doctest::Contains("no dataset '/C'"), Error);
    std::filesystem::remove(file);
}

// ---------------------------------------------------------------------------- latent_kv

TEST_CASE("latent_kv caches latent_rank elements per token and defaults n_kv_heads to n_heads") {
    auto c = tiny_model("latent_kv");
    c.plugin.erase("n_kv_heads");
    auto a = make_attention<float>(c);
    CHECK(a->kv_elements_per_token() == 6);
    for (const auto& s : a->param_specs())
        if (s.name == "w_uk") CHECK(s.shape == std::vector<int64_t>{c.n_heads * c.head_dim, 6});
    c.plugin.erase("latent_rank");
    CHECK_THROWS_WITH_AS(make_attention<float>(c), doctest::Contains("model.latent_rank"), ConfigError);
    c.plugin["latent_rank"] = 4;
    c.plugin["n_kv_heads"] = 3;
    CHECK_THROWS_WITH_AS(make_attention<float>(c), doctest::Contains("model.n_kv_heads"), ConfigError);
}

TEST_CASE("latent_kv decode matches forward across the key-decompression chunk boundary") {
    const int T = 150;   // > 2 chunks of 64 cached tokens
    PluginUnderTest<float> p(tiny_model("latent_kv"), 5);
    Rng rng(2);
    const Mat x = random_mat<float>(T, 16, rng);
    Mat out(T, 16), o(1, 16);
    p.attn->forward(1, T, x, out);
    auto cache = p.attn->new_decode_cache(T);
    CHECK(cache->bytes() == int64_t(T) * 6 * 4);
    for (int t = 0; t < T; ++t) {
        p.attn->decode_step(*cache, x.row(t), o);
        CAPTURE(t);
        CHECK(max_rel_diff(o, out.row(t)) <= 1e-4);
    }
}

// ---------------------------------------------------------------------------- compress

namespace {

// A model with 2·G·dh <= D, so full rank r = 2·G·dh is exact.
ModelConfig compressible(const std::string& attention) {
    ModelConfig c = tiny_model(attention);
    c.d_model = 32;
    c.mlp_hidden = 40;
    c.plugin = {{"n_kv_heads", 2}};
    return c;
}

// Random weights, larger than the default init so attention is far from uniform.
ParamSet random_checkpoint(const ModelConfig& c, uint64_t seed) {
    Transformer<float> m(c);
    m.init(seed);
    Rng rng(seed + 1);
    for (const auto& np : m.params())
        if (np.spec.shape.size() == 2)
            for (int64_t i = 0; i < np.spec.numel(); ++i) m.param_data()[np.offset + i] = float(0.15 * rng.normal());
    return to_param_set(m);
}

Mat logits_of(const ParamSet& p, const std::vector<int32_t>& tokens, int B, int T) {
    Transformer<float> m(model_config_from_attrs(p.attrs, "test"));
    load_param_set(m, p, "test");
    m.forward(tokens.data(), nullptr, B, T);
    return m.logits();
}

std::vector<MatD> calibration_grams(const ParamSet& p, int batches) {
    Transformer<float> m(model_config_from_attrs(p.attrs, "test"));
    load_param_set(m, p, "test");
    DataConfig d;
    d.task = "mqar";
    d.seq_len = 24;
    d.num_kv_pairs = 4;
    auto task = make_task(d);
    Rng rng(3);
    return attention_input_grams(m, *task, batches, 4, rng);
}

}  // namespace

TEST_CASE("compress at full rank reproduces the mha and gqa models' logits, weight-only and data-aware") {
    const int B = 2, T = 12;
    std::vector<int32_t> tokens(B * T);
    Rng tr(4);
    for (auto& t : tokens) t = static_cast<int32_t>(tr.below(256));
    for (const char* attention : {"mha", "gqa"}) {
        const ModelConfig c = compressible(attention);
        const ParamSet src = random_checkpoint(c, 7);
        const int G = std::string(attention) == "mha" ? c.n_heads : 2, r = 2 * G * c.head_dim;
        REQUIRE(r <= c.d_model);
        const Mat ref = logits_of(src, tokens, B, T);
        const auto grams = calibration_grams(src, 2);
        for (const auto& e : lowrank_registry())
            for (bool data_aware : {false, true}) {
                CAPTURE(attention);
                CAPTURE(e.name);
                CAPTURE(data_aware);
                CompressOptions opt;
                opt.rank = r;
                opt.method = std::string(e.name);
                opt.data_aware = data_aware;
                std::vector<LayerCompression> report;
                const ParamSet out = compress_to_latent_kv(src, opt, grams, &report);
                const ModelConfig lc = model_config_from_attrs(out.attrs, "compressed");
                CHECK(lc.attention == "latent_kv");
                CHECK(lc.plugin_int("latent_rank") == r);
                CHECK(lc.plugin_int("n_kv_heads") == G);
                const Mat got = logits_of(out, tokens, B, T);
                CHECK((got - ref).norm() / ref.norm() <= 1e-4);
                REQUIRE(report.size() == size_t(c.n_layers));
                for (const auto& l : report) CHECK(l.weight_rel_error < 1e-4);
            }
    }
}

TEST_CASE("data-aware compression has the smaller error on the calibration inputs") {
    const ModelConfig c = compressible("mha");
    const ParamSet src = random_checkpoint(c, 8);
    const auto grams = calibration_grams(src, 4);
    CompressOptions opt;
    opt.rank = 8;   // of 32
    std::vector<LayerCompression> weight_only, data_aware;
    compress_to_latent_kv(src, opt, grams, &weight_only);
    opt.data_aware = true;
    compress_to_latent_kv(src, opt, grams, &data_aware);
    for (int l = 0; l < c.n_layers; ++l) {
        CAPTURE(l);
        CHECK(data_aware[l].output_rel_error < weight_only[l].output_rel_error);
        CHECK(data_aware[l].weight_rel_error > weight_only[l].weight_rel_error);   // svd is weight-optimal
    }
}

TEST_CASE("compress rejects other attentions, impossible ranks and missing calibration data") {
    const ParamSet src = random_checkpoint(compressible("mha"), 9);
    CompressOptions opt;
    opt.rank = 33;
    CHECK_THROWS_WITH_AS(compress_to_latent_kv(src, opt), doctest::Contains("must be in 1..32"), Error);
    opt.rank = 4;
    opt.data_aware = true;
    CHECK_THROWS_WITH_AS(compress_to_latent_kv(src, opt), doctest::Contains("Gram"), Error);
    opt.data_aware = false;
    auto mla = tiny_model("mla");
    CHECK_THROWS_WITH_AS(compress_to_latent_kv(random_checkpoint(mla, 1), opt), doctest::Contains("'mla'"), Error);
}

// ---------------------------------------------------------------------------- commands

namespace {
std::filesystem::path scratch_dir() {
    const auto dir = std::filesystem::temp_directory_path() / fmt::format("kvlab_lowrank_cli_{}", getpid());
    std::filesystem::create_directories(dir);
    return dir;
}
int run_kvlab(const std::string& args, std::string& output) {
    const auto log = scratch_dir() / "output.log";
    const int rc = std::system(fmt::format("{} {} > {} 2>&1", KVLAB_BINARY, args, log.string()).c_str());
    std::ifstream in(log);
    output.assign(std::istreambuf_iterator<char>(in), {});
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}
}  // namespace

TEST_CASE("kvlab approx writes L and R and reports the error against Eckart-Young") {
    const auto dir = scratch_dir();
    const auto in = (dir / "a.h5").string(), out = (dir / "lr.h5").string();
    Rng gen(12);
    write_matrices(in, {{"A", with_spectrum<float>(40, 30, decaying(30, 1.0), gen)}});
    std::string o;
    REQUIRE(run_kvlab(fmt::format("approx --method svd --rank 5 {}:/A {}", in, out), o) == 0);
    CAPTURE(o);
    const auto at = o.find("ratio");
    REQUIRE(at != std::string::npos);
    CHECK(std::strtod(o.c_str() + at + 5, nullptr) == doctest::Approx(1.0).epsilon(1e-4));
    CHECK(read_matrix(out, "L").cols() == 5);
    CHECK(read_matrix(out, "R").rows() == 5);
    CHECK(run_kvlab(fmt::format("approx --method svd --rank 31 {}:/A {}", in, out), o) == 2);
    CHECK(o.find("--rank 31 is impossible") != std::string::npos);
    CHECK(run_kvlab(fmt::format("approx --method nope --rank 3 {}:/A {}", in, out), o) == 2);
    CHECK(o.find("registered: svd") != std::string::npos);
}

TEST_CASE("kvlab compress writes a latent_kv checkpoint that kvlab generate loads") {
    const auto dir = scratch_dir();
    const auto ckpt = (dir / "mha.h5").string(), out = (dir / "lkv.h5").string(), cfg = (dir / "calib.yaml").string();
    write_param_set(ckpt, "/params", random_checkpoint(compressible("mha"), 3));
    std::ofstream(cfg) << "name: calib\nmodel:\n  d_model: 32\n  n_layers: 2\n  n_heads: 4\n  head_dim: 4\n"
                          "  mlp_hidden: 40\ndata:\n  task: mqar\n  seq_len: 24\n  num_kv_pairs: 4\n"
                          "train:\n  steps: 1\n  batch_size: 4\n";
    std::string o;
    REQUIRE(run_kvlab(fmt::format("compress {} --rank 8 --method rsvd --data-aware --calib-batches 2 --eval-batches 1 "
                                  "--config {} --out {}", ckpt, cfg, out), o) == 0);
    CAPTURE(o);
    CHECK(o.find("KV cache per token: 64 -> 16 elements") != std::string::npos);
    const ParamSet p = read_param_set(out, "/params");
    CHECK(model_config_from_attrs(p.attrs, out).attention == "latent_kv");
    CHECK(read_table(out, "/compress").columns.size() == 3);
    CHECK(run_kvlab(fmt::format("generate {} --tokens 5 --seed 1", out), o) == 0);
    // data-aware without any calibration config
    CHECK(run_kvlab(fmt::format("compress {} --rank 8 --data-aware --out {}", ckpt, out), o) == 2);
    CHECK(o.find("--data-aware needs calibration data") != std::string::npos);
}
