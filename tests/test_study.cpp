// The post-hoc KV-compression study: framework/lowrank/study.cpp's config reader and
// measurements, and `kvlab lowrank-study` end to end through the built binary.
#include "io/results.h"
#include "lowrank/study.h"
#include "support/process.h"
#include "support/table.h"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

using namespace kvlab;
using namespace kvlab::test;
namespace fs = std::filesystem;

namespace {

fs::path scratch(const std::string& name) {
    const auto d = fs::temp_directory_path() / fmt::format("kvlab_study_tests.{}", getpid()) / name;   // parallel ctest
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

// A one-task study on configs/tiny.yaml (text; d_model 32, 4 heads x 8: ranks up to 32).
fs::path tiny_study(const fs::path& dir, const std::string& budgets = "[8, 16]", const std::string& extra = "") {
    const auto p = dir / "study.yaml";
    std::ofstream(p) << fmt::format(R"(name: study-test
output: {}
calib_batches: 2
kv_eval_batches: 2
jobs: 2
tasks:
  text:
    config: {}/configs/tiny.yaml
    set: {{model.attention: mha, train.steps: 80, train.eval_every: 80, train.eval_batches: 2, train.threads: 1}}
    budgets: {}
    mla: {{qk_rope_head_dim: 4, q_lora_rank: 0}}
    finetune: {{steps: 20, set: {{train.lr: 1.0e-3, train.min_lr: 1.0e-4}}}}
{})",
                                    (dir / "study.h5").string(), KVLAB_SOURCE_DIR, budgets, extra);
    return p;
}

}  // namespace

TEST_CASE("the study config reader reports bad keys, methods and budgets the base cannot hold") {
    const auto dir = scratch("config");
    CHECK_NOTHROW(load_study_config(tiny_study(dir).string()));
    const auto s = load_study_config(tiny_study(dir).string());
    REQUIRE(s.tasks.size() == 1);
    CHECK(s.tasks[0].max_rank == 32);
    CHECK(s.tasks[0].n_kv_heads == 4);
    CHECK(s.markdown_path() == (dir / "study.md").string());
    CHECK(s.checkpoint_dir() == (dir / "study.compressed").string());
    CHECK_THROWS_WITH_AS(load_study_config(tiny_study(dir, "[8, 40]").string()),
                         doctest::Contains("tasks.text.budgets: 40 is above the largest rank of [wk; wv]"), Error);
    CHECK_THROWS_WITH_AS(load_study_config(tiny_study(dir, "[4, 16]").string()),
                         doctest::Contains("4 leaves no room for MLA's latent"), Error);
    CHECK_THROWS_WITH_AS(load_study_config(tiny_study(dir, "[16, 8]").string()),
                         doctest::Contains("strictly increasing"), Error);
    CHECK_THROWS_WITH_AS(load_study_config(tiny_study(dir, "[8]", "methods: [svd, nope]\n").string()),
                         doctest::Contains("registered: svd"), Error);
    CHECK_THROWS_WITH_AS(load_study_config(tiny_study(dir, "[8]", "jbos: 2\n").string()),
                         doctest::Contains("jbos"), Error);
    const auto bad_ft = dir / "bad_ft.yaml";
    std::ofstream(bad_ft) << fmt::format("tasks:\n  t:\n    config: {}/configs/tiny.yaml\n    budgets: [8]\n"
                                         "    mla: {{qk_rope_head_dim: 4}}\n    finetune: {{set: {{train.batch_size: 4}}}}\n",
                                         KVLAB_SOURCE_DIR);
    CHECK_THROWS_WITH_AS(load_study_config(bad_ft.string()),
                         doctest::Contains("train.batch_size cannot change for fine-tuning"), Error);
}

TEST_CASE("every shipped study config validates") {
    for (const auto& e : fs::directory_iterator(std::string(KVLAB_SOURCE_DIR) + "/configs/studies")) {
        CAPTURE(e.path().string());
        CHECK_NOTHROW(load_study_config(e.path().string()));
    }
}

TEST_CASE("kvlab lowrank-study runs a tiny study end to end, resumes, and writes the documented tables") {
    const auto dir = scratch("e2e");
    const auto cfg = tiny_study(dir);
    const auto h5 = (dir / "study.h5").string();

    const auto dry = run_kvlab(fmt::format("lowrank-study {} --dry-run", cfg.string()));
    CAPTURE(dry.output);
    REQUIRE(dry.status == 0);
    CHECK(dry.output.find("text-mla-b8") != std::string::npos);
    CHECK(dry.output.find("text-cur-data-b16-ft") != std::string::npos);
    CHECK(dry.output.find("16 latent_kv models") != std::string::npos);
    CHECK_FALSE(fs::exists(h5));   // a dry run writes nothing

    const auto r = run_kvlab(fmt::format("lowrank-study {} --threads 1", cfg.string()));
    CAPTURE(r.output);
    REQUIRE(r.status == 0);
    CHECK(fs::exists(dir / "study.md"));
    CHECK(fs::exists(dir / "study.compressed" / "text-svd-weight-b8.h5"));

    // Every training run completed: base, 2 MLA, the base's control fine-tune, 16 fine-tunes.
    std::set<std::string> ids;
    for (const auto& [id, st] : run_statuses(h5)) {
        CHECK(st == "completed");
        ids.insert(id);
    }
    CHECK(ids.size() == 20);
    CHECK(ids.count("text-mha-ft") == 1);
    CHECK(ids.count("text-rsvd-data-b16-ft") == 1);

    const Table models = read_table(h5, "/study/text/models");
    const Table layers = read_table(h5, "/study/text/layers");
    const ParamSet spectra = read_param_set(h5, "/study/text/spectra");
    REQUIRE(spectra.tensors.size() == 2);
    CHECK(spectra.tensors[0].name == "weight");
    CHECK(spectra.tensors[0].shape == std::vector<int64_t>{2, 32});
    CHECK(spectra.tensors[1].shape == std::vector<int64_t>{2, 64});
    for (size_t i = 1; i < 32; ++i) CHECK(spectra.tensors[0].data[i] <= spectra.tensors[0].data[i - 1]);

    // layers: weight-only svd has the smallest weight error at every rank and layer, and
    // every error falls with the rank.
    const auto& method = column<std::string>(layers, "method");
    const auto& da = column<int64_t>(layers, "data_aware");
    const auto& budget = column<int64_t>(layers, "budget");
    const auto& layer = column<int64_t>(layers, "layer");
    const auto& werr = column<double>(layers, "weight_rel_error");
    const auto& kverr = column<double>(layers, "kv_rel_error_val");
    REQUIRE(method.size() == 4 * 2 * 2 * 2);
    std::map<std::tuple<std::string, int64_t, int64_t, int64_t>, double> w;   // (method, da, budget, layer)
    for (size_t i = 0; i < method.size(); ++i) {
        CHECK(werr[i] > 0);
        CHECK(werr[i] < 1);
        CHECK(std::isfinite(kverr[i]));
        w[{method[i], da[i], budget[i], layer[i]}] = werr[i];
    }
    for (const char* m : {"svd", "qrcp", "rsvd", "cur"})
        for (int64_t l = 0; l < 2; ++l) {
            CAPTURE(m);
            CAPTURE(l);
            for (int64_t b : {8, 16}) {
                CHECK(w[{"svd", 0, b, l}] <= w[{m, 0, b, l}] * (1 + 1e-6));
                CHECK(w[{"svd", 0, b, l}] <= w[{m, 1, b, l}] * (1 + 1e-6));
            }
            CHECK(w[{m, 0, 16, l}] < w[{m, 0, 8, l}]);
        }

    // models: one row for the base, 2 MLA, 16 compressed; fine-tuning lowers the loss.
    const auto& kind = column<std::string>(models, "kind");
    const auto& loss = column<double>(models, "val_loss");
    const auto& ft_loss = column<double>(models, "ft_val_loss");
    REQUIRE(kind.size() == 19);
    int n_comp = 0;
    double base_loss = 0;
    for (size_t i = 0; i < kind.size(); ++i) {
        CHECK(std::isfinite(loss[i]));
        if (kind[i] == "mha") base_loss = loss[i];
        if (kind[i] != "compressed") continue;
        ++n_comp;
        CHECK(ft_loss[i] < loss[i]);
    }
    CHECK(n_comp == 16);
    CHECK(base_loss > 0);

    // A rerun skips every training run.
    const auto again = run_kvlab(fmt::format("lowrank-study {} --threads 1", cfg.string()));
    CAPTURE(again.output);
    CHECK(again.status == 0);
    CHECK(again.output.find("skip text-mla-b16 (completed)") != std::string::npos);
    CHECK(again.output.find("skip text-cur-data-b16-ft (completed)") != std::string::npos);
}
