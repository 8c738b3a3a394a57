// train.init_from (config/loader.cpp resolves it, model/checkpoint.cpp's init_from_checkpoint
// loads it, train/trainer.cpp calls it): training that starts from saved weights.
#include "config/loader.h"
#include "core/rng.h"
#include "io/results.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "tasks/task.h"
#include "train/trainer.h"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>

using namespace kvlab;
namespace fs = std::filesystem;

namespace {

// A run without progress lines that does not overwrite a completed run.
RunOptions quiet() {
    RunOptions o;
    o.progress = false;
    return o;
}

fs::path scratch() {
    const auto dir = fs::temp_directory_path() / fmt::format("kvlab_init_from_tests_{}", getpid());   // parallel ctest
    fs::create_directories(dir);
    return dir;
}

// A small MQAR model: 60 steps take well under a second on one thread.
std::string mqar_yaml(const std::string& out, int steps, const std::string& extra_train = "",
                      const std::string& mlp_hidden = "48") {
    return fmt::format(R"(name: base
model: {{attention: mha, d_model: 24, n_layers: 2, n_heads: 4, head_dim: 6, mlp_hidden: {}}}
data: {{task: mqar, seq_len: 16, num_kv_pairs: 4}}
train: {{steps: {}, batch_size: 16, lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 5, eval_every: {}, eval_batches: 2,
         log_every: 1, threads: 1{}}}
output: {{path: {}}}
)",
                       mlp_hidden, steps, steps, extra_train, out);
}

// The loss on the first training batch a run with `cfg`'s seed draws, of the parameters
// `p`, or of the random init when p is null.
double first_batch_loss(const ExperimentConfig& cfg, const ParamSet* p) {
    Transformer<float> m(cfg.model);
    m.init(cfg.seed);
    if (p) load_param_set(m, *p, "test");
    auto task = make_task(cfg.data);
    Rng data_rng = Rng::stream(cfg.seed, /*the trainer's stream id of training batches*/ 2);
    Batch batch;
    task->train_batch(data_rng, cfg.train.batch_size, batch);
    return m.forward(batch.inputs.data(), batch.targets.data(), batch.B, batch.T);
}

}  // namespace

TEST_CASE("training from train.init_from starts at the loss of the run it names") {
    const auto dir = scratch();
    const auto base_out = (dir / "base.h5").string(), ft_out = (dir / "ft.h5").string();
    fs::remove(base_out), fs::remove(ft_out);
    const auto base = load_config_text(mqar_yaml(base_out, 60), "<test>");
    train_run(base, quiet());
    const ParamSet trained = read_param_set(base_out, "/runs/base/params");

    // The three spellings of the same parameters: the results file (one run), the run, a checkpoint.
    const auto ckpt = (dir / "ckpt.h5").string();
    fs::remove(ckpt);
    write_param_set(ckpt, "/params", trained);
    for (const std::string& spec : {base_out, base_out + ":/runs/base", ckpt}) {
        CAPTURE(spec);
        fs::remove(ft_out);
        const auto ft = load_config_text(mqar_yaml(ft_out, 1, fmt::format(", init_from: \"{}\"", spec)), "<test>");
        CHECK(ft.train.init_from == spec);
        train_run(ft, quiet());
        const auto runs = read_runs(ft_out);
        REQUIRE(runs.size() == 1);
        REQUIRE(!runs[0].train_loss.empty());
        CHECK(runs[0].train_loss[0] == doctest::Approx(first_batch_loss(ft, &trained)).epsilon(1e-5));
        // and well below the random init's loss (about ln 256)
        CHECK(runs[0].train_loss[0] < first_batch_loss(ft, nullptr) - 0.3);
    }
    // The resolved config keeps the key, so a run records where it started from.
    const auto ft = load_config_text(mqar_yaml(ft_out, 1, fmt::format(", init_from: \"{}\"", ckpt)), "<test>");
    CHECK(dump_config(ft).find("init_from: " + ckpt) != std::string::npos);
}

TEST_CASE("train.init_from whose tensors do not fit the model is an error naming the first mismatch") {
    const auto dir = scratch();
    const auto base_out = (dir / "fit_base.h5").string(), out = (dir / "fit_ft.h5").string();
    fs::remove(base_out), fs::remove(out);
    train_run(load_config_text(mqar_yaml(base_out, 2), "<test>"), quiet());
    const std::string init = fmt::format(", init_from: \"{}\"", base_out);

    // Another mlp_hidden: the first mismatched tensor is layer 0's first MLP matrix.
    auto wider = load_config_text(mqar_yaml(out, 2, init, "40"), "<test>");
    CHECK_THROWS_WITH_AS(train_run(wider, quiet()),
                         doctest::Contains(("train.init_from (" + base_out + ":/runs/base/params): parameter 'layers.0.mlp").c_str()),
                         Error);
    CHECK_FALSE(fs::exists(out));   // nothing written
    // Another attention: the mla model's first own tensor is missing.
    auto mla = load_config_text(mqar_yaml(out, 2, init), "<test>",
                                {{"model.attention", "mla"}, {"model.kv_lora_rank", "8"}, {"model.q_lora_rank", "0"},
                                 {"model.qk_rope_head_dim", "2"}});
    CHECK_THROWS_WITH_AS(train_run(mla, quiet()), doctest::Contains("missing parameter 'layers.0.attn."), Error);
    CHECK_FALSE(fs::exists(out));
    // A run id the file does not have: the error lists the runs there are.
    auto bad_run = load_config_text(mqar_yaml(out, 2, fmt::format(", init_from: \"{}:/runs/nope\"", base_out)), "<test>");
    CHECK_THROWS_WITH_AS(train_run(bad_run, quiet()), doctest::Contains("has no run 'nope'; runs: base"), Error);
}

TEST_CASE("train.init_from that names no file is a config error at its position") {
    CHECK_THROWS_WITH_AS(load_config_text(mqar_yaml("/tmp/x.h5", 2, ", init_from: nowhere/none.h5"), "cfg.yaml"),
                         doctest::Contains("train.init_from: checkpoint file not found; tried: nowhere/none.h5"),
                         ConfigError);
    CHECK_THROWS_WITH_AS(load_config_text(mqar_yaml("/tmp/x.h5", 2), "cfg.yaml", {{"train.init_from", "none.h5:/runs/a"}}),
                         doctest::Contains("<--set>"), ConfigError);
}
