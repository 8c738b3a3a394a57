// Data parallelism over threads (model/batch_split.h): a step split into batch shards on
// model replicas gives the loss and gradient of the unsplit step, for every plugin.
#include "core/error.h"
#include "model/batch_split.h"
#include "support/env.h"
#include "support/harness.h"
#include "support/process.h"

#include <fmt/format.h>

#include <omp.h>

#include <cstdlib>

using namespace kvlab;
using namespace kvlab::test;

namespace {

// Restores OpenMP's thread count when it goes out of scope.
struct ScopedThreads {
    explicit ScopedThreads(int n) : old_(omp_get_max_threads()) { omp_set_num_threads(n); }
    ~ScopedThreads() { omp_set_num_threads(old_); }
    int old_;
};

// B = 5 sequences of T = 6; sequence 3 has no scored target (all -1), others some.
void batch(Rng& rng, int B, int T, std::vector<int32_t>& in, std::vector<int32_t>& tg) {
    in.resize(size_t(B) * T);
    tg.resize(in.size());
    for (int i = 0; i < B * T; ++i) {
        in[size_t(i)] = static_cast<int32_t>(rng.below(256));
        tg[size_t(i)] = (i / T == 3 || i % 4 == 2) ? -1 : static_cast<int32_t>(rng.below(256));
    }
}

}  // namespace

TEST_CASE("a batch split into shards gives the unsplit loss and gradient, for every plugin") {
    const int B = 5, T = 6;
    for (const auto& c : all_cases()) {
        CAPTURE(c.label);
        Transformer<double> m(c.cfg);
        m.init(3);
        Rng rng(4);
        for (int64_t i = 0; i < m.n_params(); ++i) m.param_data()[i] *= 1.0 + 0.5 * rng.normal();
        std::vector<int32_t> in, tg;
        batch(rng, B, T, in, tg);
        m.zero_grad();
        const double ref_loss = m.forward(in.data(), tg.data(), B, T);
        m.backward();
        const std::vector<double> ref(m.grad_data(), m.grad_data() + m.n_params());
        double gmax = 0;
        for (double g : ref) gmax = std::max(gmax, std::abs(g));
        REQUIRE(gmax > 0);

        // 2 and 3 shards (5 sequences: 3+2 and 2+2+1, one shard without scored targets), on
        // 2 threads and, for 3 shards, fewer threads than shards
        for (int shards : {2, 3})
            for (int threads : {1, 2}) {
                CAPTURE(shards);
                CAPTURE(threads);
                ScopedThreads th(threads);
                BatchSplit<double> split(m, shards);
                CHECK(split.shards() == shards);
                // backward adds to what the arena holds, as Transformer::backward does
                std::fill(m.grad_data(), m.grad_data() + m.n_params(), 0.25);
                const double loss = split.forward(in.data(), tg.data(), B, T);
                CHECK(rel_err(loss, ref_loss) < 1e-13);
                split.backward();
                double worst = 0;
                for (int64_t i = 0; i < m.n_params(); ++i)
                    worst = std::max(worst, std::abs(m.grad_data()[i] - 0.25 - ref[size_t(i)]));
                CHECK(worst < 1e-12 * std::max(1.0, gmax));
                // the replicas are scratch: a second step gives the same gradient, bit for bit
                std::vector<double> first(m.grad_data(), m.grad_data() + m.n_params());
                std::fill(m.grad_data(), m.grad_data() + m.n_params(), 0.25);
                split.forward(in.data(), tg.data(), B, T);
                split.backward();
                CHECK(std::equal(first.begin(), first.end(), m.grad_data()));
                CHECK(split.replica_bytes() >= (shards - 1) * m.n_params() * int64_t(sizeof(double)));
            }
    }
}

TEST_CASE("a replica reads the model's parameters and writes only its own gradients") {
    Transformer<float> m(tiny_model("mla"));
    m.init(1);
    Transformer<float> r(Transformer<float>::ReplicaOf{m});
    CHECK(r.param_data() == m.param_data());
    CHECK(r.grad_data() != m.grad_data());
    CHECK(r.n_params() == m.n_params());
    std::vector<int32_t> in(8, 7), tg(8, 9);
    m.zero_grad();
    r.zero_grad();
    const double a = m.forward(in.data(), tg.data(), 2, 4);
    const double b = r.forward(in.data(), tg.data(), 2, 4);
    CHECK(a == b);
    r.backward();
    for (int64_t i = 0; i < m.n_params(); ++i) REQUIRE(m.grad_data()[i] == 0.f);
    m.param_data()[m.find("lm_head").offset] += 1.f;   // the replica sees parameter updates
    CHECK(r.forward(in.data(), tg.data(), 2, 4) != b);
}

TEST_CASE("errors inside a shard reach the caller; with fewer sequences than shards some stay idle") {
    ScopedThreads th(2);
    Transformer<float> m(tiny_model("mha"));
    m.init(1);
    BatchSplit<float> split(m, 2);
    std::vector<int32_t> in(12, 5), tg(12, 6);
    in[10] = 999;   // second shard
    CHECK_THROWS_WITH(split.forward(in.data(), tg.data(), 2, 6), doctest::Contains("token id 999"));
    in[10] = 5;
    // one sequence: the model alone
    const double one = split.forward(in.data(), tg.data(), 1, 6);
    CHECK(one == m.forward(in.data(), tg.data(), 1, 6));
    split.backward();
}

TEST_CASE("KVLAB_BATCH_SPLIT chooses the shard count and rejects other values") {
    {
        ScopedEnv e("KVLAB_BATCH_SPLIT", "auto");
        CHECK(batch_shards_from_env(2, 32) == 2);
        CHECK(batch_shards_from_env(4, 3) == 3);
        CHECK(batch_shards_from_env(1, 32) == 1);
    }
    {
        ScopedEnv e("KVLAB_BATCH_SPLIT", "off");
        CHECK(batch_shards_from_env(2, 32) == 1);
    }
    ScopedEnv e("KVLAB_BATCH_SPLIT", "yes");
    CHECK_THROWS_WITH_AS(batch_shards_from_env(2, 32), doctest::Contains("KVLAB_BATCH_SPLIT=\"yes\": allowed are"),
                         Error);
}

TEST_CASE("kvlab rejects a bad KVLAB_BATCH_SPLIT at once, and bench reports the shards") {
    const auto bad = run_shell(fmt::format("KVLAB_BATCH_SPLIT=2 '{}' list", KVLAB_BINARY));
    INFO(bad.output);
    CHECK(bad.status == 2);
    CHECK(bad.output.find("KVLAB_BATCH_SPLIT=\"2\": allowed are auto") != std::string::npos);
    for (const char* mode : {"auto", "off"}) {
        CAPTURE(mode);
        const auto b = run_shell(fmt::format("KVLAB_BATCH_SPLIT={} '{}' bench --config small --plugins gqa --threads 2 "
                                             "--steps 1 --parts train",
                                             mode, KVLAB_BINARY));
        INFO(b.output);
        REQUIRE(b.status == 0);
        const std::string row = std::string(mode) == "auto" ? "small  gqa         2      2" : "small  gqa         2      1";
        CHECK(b.output.find(row) != std::string::npos);
    }
}
