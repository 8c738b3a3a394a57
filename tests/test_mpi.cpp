// MPI (framework/dist, train/sweep_mpi.cpp) through the built binary under
// `mpirun -np 2 --oversubscribe`: a distributed sweep writes what a serial sweep writes,
// and data-parallel training follows the single-process loss curve. Those are skipped
// when kvlab was built without MPI (KVLAB_MPI off); the gradient weighting of shards is
// checked in one process.
#include "dist/data_parallel.h"
#include "dist/mpi.h"
#include "io/results.h"
#include "model/transformer.h"
#include "support/harness.h"
#include "support/process.h"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

using namespace kvlab;
using namespace kvlab::test;
namespace fs = std::filesystem;

#ifndef KVLAB_MPIEXEC
#define KVLAB_MPIEXEC "mpirun"
#endif

namespace {

fs::path mpi_tmp_dir(const std::string& name) {
    const auto d = fs::temp_directory_path() / fmt::format("kvlab_mpi_tests.{}", getpid()) / name;
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

// kvlab with `args`, under `mpirun -np ranks --oversubscribe` when ranks > 0.
Result run_kvlab(int ranks, const std::string& args) {
    // Tests may run as root (containers, CI): Open MPI refuses that unless told.
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    const std::string launcher = ranks > 0 ? fmt::format("'{}' -np {} --oversubscribe ", KVLAB_MPIEXEC, ranks) : "";
    return run_shell(fmt::format("{}'{}' {}", launcher, KVLAB_BINARY, args));
}

// A tiny MQAR model; every plugin key set so any attention can be swept.
std::string tiny_config(const fs::path& out, int steps, int batch, const std::string& extra) {
    return fmt::format(R"(name: mpi-test
model: {{attention: mha, d_model: 16, n_layers: 1, n_heads: 4, head_dim: 4, mlp_hidden: 32,
        n_kv_heads: 2, kv_lora_rank: 8, q_lora_rank: 0, qk_rope_head_dim: 4}}
data: {{task: mqar, seq_len: 16, num_kv_pairs: 2}}
train: {{steps: {}, batch_size: {}, warmup_steps: 2, eval_every: 10, eval_batches: 2, log_every: 1, threads: 1}}
output: {{path: {}}}
{})",
                       steps, batch, out.string(), extra);
}

fs::path write_file(const fs::path& p, const std::string& text) {
    std::ofstream(p) << text;
    return p;
}

// Attributes that say how long a run took or how it ran, not what it computed.
bool about_the_machine(const std::string& name) {
    return name == "tokens_per_second" || name == "wall_seconds" || name == "threads" || name == "data_parallel_ranks";
}

std::map<std::string, RunRecord> by_id(const std::vector<RunRecord>& runs) {
    std::map<std::string, RunRecord> m;
    for (const auto& r : runs) m[r.id] = r;
    return m;
}

}  // namespace

TEST_CASE("a sweep over 2 MPI ranks writes the results file a serial sweep writes" * doctest::skip(!dist::built())) {
    const auto d = mpi_tmp_dir("sweep");
    const auto cfg = write_file(d / "s.yaml", tiny_config(d / "r.h5", 20, 4,
                                                          "sweep:\n  model.attention: [mha, gqa]\n  seed: [0, 1]\n"));
    const auto serial = run_kvlab(0, fmt::format("sweep {} --jobs 1 --quiet", cfg.string()));
    INFO(serial.output);
    REQUIRE(serial.status == 0);
    fs::rename(d / "r.h5", d / "serial.h5");   // same path for both: the runs' config attributes match

    const auto mpi = run_kvlab(2, fmt::format("sweep {}", cfg.string()));
    INFO(mpi.output);
    REQUIRE(mpi.status == 0);
    CHECK(mpi.output.find("sweep over 2 MPI ranks") != std::string::npos);
    CHECK(!fs::exists(d / ".r.parts"));   // part files merged and removed

    const auto a = by_id(read_runs((d / "serial.h5").string())), b = by_id(read_runs((d / "r.h5").string()));
    REQUIRE(a.size() == 4);
    REQUIRE(b.size() == 4);
    for (const auto& [run_id, ra] : a) {
        const std::string& id = run_id;   // (clang 14 cannot capture a structured binding)
        CAPTURE(id);
        REQUIRE(b.count(id) == 1);
        const auto& rb = b.at(id);
        // Same numbers for the same seeds, bit for bit.
        CHECK(ra.final_attrs == rb.final_attrs);
        CHECK(ra.train_step == rb.train_step);
        CHECK(ra.train_loss == rb.train_loss);
        CHECK(ra.eval_loss == rb.eval_loss);
        CHECK(ra.eval_accuracy == rb.eval_accuracy);
        Attrs xa, xb;
        for (const auto& kv : ra.attrs)
            if (!about_the_machine(kv.first)) xa.push_back(kv);
        for (const auto& kv : rb.attrs)
            if (!about_the_machine(kv.first)) xb.push_back(kv);
        CHECK(xa == xb);   // config, status, seed, sizes
    }

    // Resume: every point is completed, nothing runs again.
    const auto again = run_kvlab(2, fmt::format("sweep {}", cfg.string()));
    INFO(again.output);
    CHECK(again.status == 0);
    CHECK(again.output.find("4 skipped") != std::string::npos);
}

TEST_CASE("data-parallel training over 2 MPI ranks follows the single-process losses" * doctest::skip(!dist::built())) {
    const auto d = mpi_tmp_dir("train");
    const auto cfg = write_file(d / "t.yaml", tiny_config(d / "r.h5", 20, 8, ""));
    const auto one = run_kvlab(0, fmt::format("train {} --quiet --set output.path={}", cfg.string(), (d / "one.h5").string()));
    INFO(one.output);
    REQUIRE(one.status == 0);
    const auto two = run_kvlab(2, fmt::format("train {} --quiet --set output.path={}", cfg.string(), (d / "two.h5").string()));
    INFO(two.output);
    REQUIRE(two.status == 0);

    const auto ra = read_runs((d / "one.h5").string()), rb = read_runs((d / "two.h5").string());
    REQUIRE(ra.size() == 1);
    REQUIRE(rb.size() == 1);
    const auto &a = ra[0], &b = rb[0];
    REQUIRE(a.train_loss.size() == 20);
    REQUIRE(b.train_loss.size() == a.train_loss.size());
    for (size_t i = 0; i < a.train_loss.size(); ++i) {
        CAPTURE(i);
        CHECK(std::abs(b.train_loss[i] - a.train_loss[i]) <= 1e-5 * std::abs(a.train_loss[i]));
    }
    REQUIRE(b.eval_loss.size() == a.eval_loss.size());
    for (size_t i = 0; i < a.eval_loss.size(); ++i)
        CHECK(std::abs(b.eval_loss[i] - a.eval_loss[i]) <= 1e-5 * std::abs(a.eval_loss[i]));
    CHECK(a.eval_accuracy == b.eval_accuracy);
    bool ranks_attr = false;
    for (const auto& [k, v] : b.attrs) ranks_attr |= k == "data_parallel_ranks" && std::get<int64_t>(v) == 2;
    CHECK(ranks_attr);
}

TEST_CASE("under mpirun a batch that does not split over the ranks, or a one-process command, is an input error" *
          doctest::skip(!dist::built())) {
    const auto d = mpi_tmp_dir("errors");
    const auto cfg = write_file(d / "t.yaml", tiny_config(d / "r.h5", 2, 5, ""));
    const auto bad = run_kvlab(2, fmt::format("train {} --quiet", cfg.string()));
    INFO(bad.output);
    CHECK(bad.status == 2);
    CHECK(bad.output.find("train.batch_size") != std::string::npos);
    CHECK(bad.output.find("divisible by 2") != std::string::npos);
    CHECK(bad.output.find("[rank 1]") == std::string::npos);   // said once, by rank 0
    CHECK(!fs::exists(d / "r.h5"));

    const auto other = run_kvlab(2, "list");
    INFO(other.output);
    CHECK(other.status == 2);
    CHECK(other.output.find("only train and sweep run over MPI ranks") != std::string::npos);
}

TEST_CASE("shard gradients weighted by their scored tokens sum to the whole batch's gradient") {
    // Shards that score different numbers of tokens (as MQAR's answer-only targets can):
    // a plain average over shards would be wrong, the weighting by scored tokens is exact.
    const int B = 4, T = 8;
    Transformer<float> m(test::tiny_model("mha"));
    m.init(3);
    Rng rng(7);
    Batch whole;
    whole.B = B;
    whole.T = T;
    for (int i = 0; i < B * T; ++i) {
        whole.inputs.push_back(int32_t(rng.uniform() * 256) % 256);
        whole.targets.push_back(int32_t(rng.uniform() * 256) % 256);
    }
    for (int t = 0; t < T; ++t)   // rows 0 and 1 score 1 token each, rows 2 and 3 all of theirs
        for (int row : {0, 1})
            if (t != 3) whole.targets[size_t(row * T + t)] = -1;
    const int64_t n = m.n_params();

    m.zero_grad();
    const double loss = m.forward(whole.inputs.data(), whole.targets.data(), B, T);
    m.backward();
    const std::vector<float> full(m.grad_data(), m.grad_data() + n);

    std::vector<double> summed(size_t(n), 0.0), naive(size_t(n), 0.0);
    double loss_sum = 0;
    const int64_t total = dist::scored_tokens(whole);
    REQUIRE(total == 2 + 2 * T);
    for (int shard = 0; shard < 2; ++shard) {
        Batch b;
        b.B = B / 2;
        b.T = T;
        const auto first = size_t(shard * (B / 2) * T), count = size_t((B / 2) * T);
        b.inputs.assign(whole.inputs.begin() + long(first), whole.inputs.begin() + long(first + count));
        b.targets.assign(whole.targets.begin() + long(first), whole.targets.begin() + long(first + count));
        m.zero_grad();
        const double l = m.forward(b.inputs.data(), b.targets.data(), b.B, b.T);
        m.backward();
        const int64_t s = dist::scored_tokens(b);
        loss_sum += l * double(s);
        for (int64_t i = 0; i < n; ++i) naive[size_t(i)] += 0.5 * double(m.grad_data()[i]);
        dist::weight_shard_gradient(m.grad_data(), n, s, total);
        for (int64_t i = 0; i < n; ++i) summed[size_t(i)] += double(m.grad_data()[i]);
    }
    CHECK(loss_sum / double(total) == doctest::Approx(loss).epsilon(1e-6));
    double err = 0, naive_err = 0, scale = 0;
    for (int64_t i = 0; i < n; ++i) {
        err = std::max(err, std::abs(summed[size_t(i)] - double(full[size_t(i)])));
        naive_err = std::max(naive_err, std::abs(naive[size_t(i)] - double(full[size_t(i)])));
        scale = std::max(scale, std::abs(double(full[size_t(i)])));
    }
    CHECK(err <= 1e-5 * scale);
    CHECK(naive_err > 1e-2 * scale);   // 1/shards would not do
}

TEST_CASE("a failing point of a sweep over 2 MPI ranks is recorded as failed while the others complete" *
          doctest::skip(!dist::built())) {
    const auto d = mpi_tmp_dir("failing");
    // lr 1e6 without clipping makes the loss non-finite within a few steps.
    const auto cfg = write_file(d / "s.yaml", tiny_config(d / "r.h5", 20, 4, "sweep:\n  train.lr: [1.0e-3, 1.0e6, 2.0e-3, 3.0e-3]\n"));
    const auto r = run_kvlab(2, fmt::format("sweep {} --set train.grad_clip=0", cfg.string()));
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("lr-1.0e6: ") != std::string::npos);
    const auto runs = by_id(read_runs((d / "r.h5").string()));
    REQUIRE(runs.size() == 4);
    for (const auto& [run_id, run] : runs) {
        const std::string& id = run_id;   // (clang 14 cannot capture a structured binding)
        CAPTURE(id);
        std::string status, error;
        for (const auto& [k, v] : run.attrs) {
            if (k == "status") status = std::get<std::string>(v);
            if (k == "error") error = std::get<std::string>(v);
        }
        CHECK(status == (id == "lr-1.0e6" ? "failed" : "completed"));
        if (id == "lr-1.0e6") CHECK(error.find("nan") != std::string::npos);
    }
}
