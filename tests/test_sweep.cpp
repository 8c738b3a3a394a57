// Sweeps (framework/train/sweep.cpp, `kvlab sweep` through the built binary), the report
// (framework/train/report.cpp, `kvlab report`) and scripts/plot_results.py.
#include "config/loader.h"
#include "io/results.h"
#include "train/report.h"
#include "support/process.h"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

using namespace kvlab;
using namespace kvlab::test;
namespace fs = std::filesystem;

namespace {

fs::path sweep_dir(const std::string& name) { return scratch_dir("kvlab_sweep_tests", name); }

// A tiny MQAR model (well under a second per point); every plugin key set so any
// attention can be swept. `extra` is appended (a sweep: block, overrides of train:).
std::string tiny_config(const fs::path& out, int steps, const std::string& sweep) {
    return fmt::format(R"(name: sweep-test
model: {{attention: mha, d_model: 16, n_layers: 1, n_heads: 4, head_dim: 4, mlp_hidden: 32,
        n_kv_heads: 2, kv_lora_rank: 8, q_lora_rank: 0, qk_rope_head_dim: 4}}
data: {{task: mqar, seq_len: 16, num_kv_pairs: 2}}
train: {{steps: {}, batch_size: 4, warmup_steps: 1, eval_every: {}, eval_batches: 1, threads: 1}}
output: {{path: {}}}
{})",
                       steps, steps, out.string(), sweep);
}

fs::path write_file(const fs::path& p, const std::string& text) {
    std::ofstream(p) << text;
    return p;
}

std::string status_of(const RunRecord& r) {
    for (const auto& [k, v] : r.attrs)
        if (k == "status") return std::get<std::string>(v);
    return {};
}

std::string error_of(const RunRecord& r) {
    for (const auto& [k, v] : r.attrs)
        if (k == "error") return std::get<std::string>(v);
    return {};
}

}  // namespace

TEST_CASE("a sweep expands to the product of its axes, tied keys zipped, with readable run ids") {
    const auto base = load_config_text(tiny_config("/tmp/x.h5", 2, R"(sweep:
  model.attention+model.n_kv_heads: [[mha, 4], [gqa, 2]]
  seed: [0, 1, 2]
)"),
                                       "<test>");
    const auto points = expand_sweep(base);
    REQUIRE(points.size() == 6);
    // First axis slowest; tied values move together.
    CHECK(points[0].run_id == "attention-mha_n_kv_heads-4_seed-0");
    CHECK(points[2].run_id == "attention-mha_n_kv_heads-4_seed-2");
    CHECK(points[3].run_id == "attention-gqa_n_kv_heads-2_seed-0");
    CHECK(points[3].model.attention == "gqa");
    CHECK(points[3].model.plugin_int("n_kv_heads") == 2);
    CHECK(points[5].seed == 2);
    std::set<std::string> ids;
    for (const auto& p : points) {
        ids.insert(p.run_id);
        CHECK(p.sweep.empty());
    }
    CHECK(ids.size() == 6);

    // --dry-run prints the same ids and runs nothing.
    const auto d = sweep_dir("dry_run");
    const auto cfg = write_file(d / "s.yaml", tiny_config(d / "r.h5", 2, "sweep:\n  seed: [0, 1]\n  train.lr: [1.0e-3, 3.0e-3]\n"));
    const auto r = run_kvlab(fmt::format("sweep {} --dry-run", cfg.string()));
    CHECK(r.status == 0);
    CHECK(r.output.find("seed-0_lr-1.0e-3") != std::string::npos);
    CHECK(r.output.find("seed-1_lr-3.0e-3") != std::string::npos);
    CHECK(!fs::exists(d / "r.h5"));
}

TEST_CASE("an invalid sweep point fails before anything runs and creates no results file") {
    const auto d = sweep_dir("invalid");
    // n_heads 4 is not divisible by n_kv_heads 3: only the second point is invalid.
    const auto cfg = write_file(d / "s.yaml", tiny_config(d / "r.h5", 2, R"(sweep:
  model.attention: [gqa]
  model.n_kv_heads: [2, 3]
)"));
    const auto r = run_kvlab(fmt::format("sweep {} --jobs 2", cfg.string()));
    INFO(r.output);
    CHECK(r.status == 2);
    CHECK(r.output.find("attention-gqa_n_kv_heads-3") != std::string::npos);
    CHECK(r.output.find("n_kv_heads") != std::string::npos);
    CHECK(!fs::exists(d / "r.h5"));
    CHECK(!fs::exists(d / ".r.parts"));
}

TEST_CASE("a sweep with --jobs 2 runs every point into one results file") {
    const auto d = sweep_dir("jobs2");
    const auto cfg = write_file(d / "s.yaml", tiny_config(d / "r.h5", 20, "sweep:\n  model.attention: [mha, gqa, mqa, mla]\n"));
    const auto r = run_kvlab(fmt::format("sweep {} --jobs 2", cfg.string()));
    INFO(r.output);
    CHECK(r.status == 0);
    const auto runs = read_runs((d / "r.h5").string());
    REQUIRE(runs.size() == 4);
    std::set<std::string> ids;
    for (const auto& run : runs) {
        CAPTURE(run.id);
        ids.insert(run.id);
        CHECK(status_of(run) == "completed");
        CHECK(!run.final_attrs.empty());
        CHECK(run.eval_loss.size() == 1);
        CHECK(run.train_step.back() == 20);
    }
    CHECK(ids == std::set<std::string>{"attention-mha", "attention-gqa", "attention-mqa", "attention-mla"});
    CHECK(!fs::exists(d / ".r.parts"));   // part files merged and removed
}

TEST_CASE("a failing sweep point is recorded as failed with its error while the others complete") {
    const auto d = sweep_dir("failing");
    // lr 1e6 without clipping makes the loss non-finite within a few steps.
    const auto cfg = write_file(d / "s.yaml", tiny_config(d / "r.h5", 20, "sweep:\n  train.lr: [1.0e-3, 1.0e6, 2.0e-3]\n"));
    const auto r = run_kvlab(fmt::format("sweep {} --jobs 2 --set train.grad_clip=0", cfg.string()));
    INFO(r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("lr-1.0e6: ") != std::string::npos);
    const auto runs = read_runs((d / "r.h5").string());
    REQUIRE(runs.size() == 3);
    for (const auto& run : runs) {
        CAPTURE(run.id);
        if (run.id == "lr-1.0e6") {
            CHECK(status_of(run) == "failed");
            CHECK(error_of(run).find("nan") != std::string::npos);
        } else {
            CHECK(status_of(run) == "completed");
        }
    }
}

TEST_CASE("a killed sweep resumes: completed points are skipped and the rest run once") {
    const auto d = sweep_dir("resume");
    const auto cfg = write_file(d / "s.yaml", tiny_config(d / "r.h5", 300, "sweep:\n  seed: [0, 1, 2]\n"));
    const auto log = d / "log.txt";
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {   // the sweep in its own process group, output to a file
        setpgid(0, 0);
        FILE* f = std::freopen(log.c_str(), "w", stdout);
        (void)f;
        dup2(fileno(stdout), STDERR_FILENO);
        execl(KVLAB_BINARY, KVLAB_BINARY, "sweep", cfg.c_str(), "--jobs", "1", static_cast<char*>(nullptr));
        _exit(127);
    }
    setpgid(pid, pid);
    // Wait for the first finished point (its line is printed after the merge).
    bool first_done = false;
    for (int i = 0; i < 600 && !first_done; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        std::ifstream in(log);
        std::stringstream s;
        s << in.rdbuf();
        first_done = s.str().find("[1/3]") != std::string::npos;
    }
    REQUIRE(first_done);
    kill(-pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st));

    const auto before = read_runs((d / "r.h5").string());   // the file opens after a SIGKILL
    REQUIRE(!before.empty());
    CHECK(status_of(before.front()) == "completed");
    const std::string first_id = before.front().id;

    const auto r = run_kvlab(fmt::format("sweep {}", cfg.string()));
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK(r.output.find(fmt::format("skip {} (completed)", first_id)) != std::string::npos);
    CHECK(r.output.find("1 skipped") != std::string::npos);
    const auto runs = read_runs((d / "r.h5").string());
    std::set<std::string> ids;
    for (const auto& run : runs) {
        ids.insert(run.id);
        CHECK(status_of(run) == "completed");
    }
    CHECK(runs.size() == 3);
    CHECK(ids.size() == 3);
    CHECK(!fs::exists(d / ".r.parts"));
}

namespace {

// A results file written directly: mha at two learning rates and gqa at one, over
// seeds, plus one failed run; final metrics chosen so the statistics are known.
fs::path synthetic_results(const fs::path& d) {
    const fs::path out = d / "syn.h5";
    const std::string base = tiny_config(out, 10, "");
    struct R {
        std::string id, attention;
        double lr;
        int seed;
        double loss, acc;
    };
    const std::vector<R> rs = {
        {"mha_lr1_s0", "mha", 1e-3, 0, 2.0, 0.9}, {"mha_lr1_s1", "mha", 1e-3, 1, 2.2, 0.8},
        {"mha_lr3_s0", "mha", 3e-3, 0, 1.0, 0.5}, {"mha_lr3_s1", "mha", 3e-3, 1, 1.2, 0.6},
        {"gqa_s0", "gqa", 1e-3, 0, 1.5, 0.7},     {"gqa_s1", "gqa", 1e-3, 1, 1.6, 0.7},
        {"gqa_s2", "gqa", 1e-3, 2, 1.7, 0.7},
    };
    for (const auto& r : rs) {
        const auto cfg = load_config_text(base, "<test>",
                                          {{"model.attention", r.attention},
                                           {"train.lr", fmt::format("{}", r.lr)},
                                           {"seed", std::to_string(r.seed)}});
        RunLogger log(out.string(), r.id);
        log.begin_run(cfg.resolved_yaml, r.attention,
                      {{"seed", int64_t(r.seed)},
                       {"n_params", int64_t(r.attention == "mha" ? 1000 : 900)},
                       {"kv_cache_elements_per_token", int64_t(r.attention == "mha" ? 32 : 16)},
                       {"kv_cache_bytes_per_token", int64_t(r.attention == "mha" ? 128 : 64)}});
        for (int s = 1; s <= 10; ++s) log.log_train(s, 5.0 - 0.3 * s, r.lr);
        log.log_eval(5, r.loss + 1, r.acc / 2);
        log.log_eval(10, r.loss, r.acc);
        ParamSet p;
        p.attrs = {{"attention", r.attention}};
        if (r.attention == "gqa") p.attrs.emplace_back("n_kv_heads", int64_t(2));
        log.end_run({{"val_loss", r.loss}, {"val_bits_per_byte", r.loss / std::log(2.0)}, {"val_accuracy", r.acc}}, p);
    }
    RunLogger bad(out.string(), "mqa_nan");
    bad.fail_run("training loss is nan at step 3");
    return out;
}

}  // namespace

TEST_CASE("the report groups seeds, picks the best learning rate and lists failed runs") {
    const auto d = sweep_dir("report");
    const auto file = synthetic_results(d);
    const auto runs = read_runs(file.string());

    // auto: accuracy picks lr 1e-3 for mha (0.85 > 0.55).
    auto rep = build_report(runs);
    REQUIRE(rep.rows.size() == 2);
    const auto& mha = rep.rows[0];
    CHECK(mha.variant == "mha");
    CHECK(mha.metric == "val_accuracy");
    CHECK(mha.lr == doctest::Approx(1e-3));
    CHECK(mha.lrs.size() == 2);
    CHECK(mha.val_accuracy.mean == doctest::Approx(0.85));
    CHECK(mha.val_loss.mean == doctest::Approx(2.1));
    CHECK(mha.val_loss.std == doctest::Approx(std::sqrt(0.02)));
    CHECK(mha.run_ids.size() == 2);
    CHECK(mha.kv_elements_per_token == 32);
    CHECK(mha.formula == "2·4·4·1");
    const auto& gqa = rep.rows[1];
    CHECK(gqa.variant == "gqa (n_kv_heads 2)");
    CHECK(gqa.kv_sharing.find("2 query heads per K/V head") != std::string::npos);
    CHECK(gqa.val_loss.mean == doctest::Approx(1.6));
    CHECK(gqa.val_loss.std == doctest::Approx(0.1));
    CHECK(gqa.val_loss.n == 3);
    REQUIRE(rep.failed.size() == 1);
    CHECK(rep.failed[0].first == "mqa_nan");

    // val_loss picks lr 3e-3 for mha (1.1 < 2.1).
    rep = build_report(runs, ReportMetric::val_loss);
    CHECK(rep.rows[0].lr == doctest::Approx(3e-3));
    CHECK(rep.rows[0].val_loss.mean == doctest::Approx(1.1));

    const std::string md = report_markdown(rep);
    CHECK(md.find("| mha |") != std::string::npos);
    CHECK(md.find("1.1000 ± 0.1414") != std::string::npos);
    CHECK(md.find("1.6000 ± 0.1000") != std::string::npos);
    CHECK(md.find("n=3") != std::string::npos);
    CHECK(md.find("mqa_nan: training loss is nan") != std::string::npos);

    // Through the binary: md and csv (whose failed-run list goes to stderr).
    auto r = run_kvlab(fmt::format("report {} --metric val_loss", file.string()));
    CHECK(r.status == 0);
    CHECK(r.output.find("1.1000 ± 0.1414") != std::string::npos);
    CHECK(r.output.find("0.003 (best val_loss of 0.001, 0.003)") != std::string::npos);
    r = run_kvlab(fmt::format("report {} --format csv", file.string()), false);
    CHECK(r.status == 0);
    CHECK(r.output.rfind("variant,attention,task,", 0) == 0);
    CHECK(r.output.find("\n\"gqa (n_kv_heads 2)\",gqa,mqar,") == std::string::npos);   // no comma: unquoted
    CHECK(r.output.find("\ngqa (n_kv_heads 2),gqa,mqar,") != std::string::npos);
    CHECK(r.output.find(",1.6,0.1,") != std::string::npos);
    CHECK(run_kvlab(fmt::format("report {} --format xml", file.string())).status == 2);
}

TEST_CASE("plot_results.py writes the Pareto and curve PNGs") {
    if (std::system("/usr/bin/python3 -c 'import h5py, matplotlib' >/dev/null 2>&1") != 0) {
        MESSAGE("skipped: /usr/bin/python3 cannot import h5py and matplotlib");
        return;
    }
    const auto d = sweep_dir("plot");
    const auto file = synthetic_results(d);
    const std::string cmd = fmt::format("/usr/bin/python3 {}/scripts/plot_results.py {} --out-dir {} 2>&1",
                                        KVLAB_SOURCE_DIR, file.string(), (d / "png").string());
    CHECK(std::system(cmd.c_str()) == 0);
    CHECK(fs::file_size(d / "png" / "syn_pareto.png") > 1000);
    CHECK(fs::file_size(d / "png" / "syn_curves.png") > 1000);
    CHECK_FALSE(fs::exists(d / "png" / "syn_capacity.png"));   // one num_kv_pairs only

    // A file without runs is a clear error.
    const auto empty = d / "empty.h5";
    write_param_set(empty.string(), "/params", ParamSet{});   // an HDF5 file without /runs
    const std::string cmd2 = fmt::format("/usr/bin/python3 {}/scripts/plot_results.py {} > {} 2>&1", KVLAB_SOURCE_DIR,
                                         empty.string(), (d / "err.txt").string());
    CHECK(std::system(cmd2.c_str()) != 0);
    std::ifstream in(d / "err.txt");
    std::stringstream s;
    s << in.rdbuf();
    CHECK(s.str().find("has no runs") != std::string::npos);
}

TEST_CASE("plot_results.py draws capability against the number of key-value pairs when a sweep varies it") {
    if (std::system("/usr/bin/python3 -c 'import h5py, matplotlib' >/dev/null 2>&1") != 0) {
        MESSAGE("skipped: /usr/bin/python3 cannot import h5py and matplotlib");
        return;
    }
    const auto d = sweep_dir("capacity");
    const fs::path out = d / "cap.h5";
    const std::string base = tiny_config(out, 10, "");
    for (const std::string attention : {"mha", "gqa"})
        for (int pairs : {2, 3})
            for (int seed : {0, 1}) {
                const auto cfg = load_config_text(base, "<test>",
                                                  {{"model.attention", attention},
                                                   {"data.num_kv_pairs", std::to_string(pairs)},
                                                   {"seed", std::to_string(seed)}});
                RunLogger log(out.string(), fmt::format("{}_p{}_s{}", attention, pairs, seed));
                log.begin_run(cfg.resolved_yaml, attention,
                              {{"seed", int64_t(seed)}, {"kv_cache_elements_per_token", int64_t(attention == "mha" ? 32 : 16)}});
                log.log_train(1, 3.0, 1e-3);
                log.log_eval(1, 2.0, 0.5);
                ParamSet p;
                p.attrs = {{"attention", attention}};
                log.end_run({{"val_loss", 2.0}, {"val_bits_per_byte", 2.0 / std::log(2.0)},
                             {"val_accuracy", 1.0 / pairs - 0.01 * seed}},
                            p);
            }
    const std::string cmd = fmt::format("/usr/bin/python3 {}/scripts/plot_results.py {} --out-dir {} 2>&1",
                                        KVLAB_SOURCE_DIR, out.string(), (d / "png").string());
    CHECK(std::system(cmd.c_str()) == 0);
    CHECK(fs::file_size(d / "png" / "cap_capacity.png") > 1000);
}
