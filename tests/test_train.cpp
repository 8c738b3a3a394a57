// Training: schedule, optimizer, clipping, end-to-end runs on both tasks, determinism,
// the results file's contents, and gradient dumps loading back.
#include "config/loader.h"
#include "io/results.h"
#include "model/checkpoint.h"
#include "support/env.h"
#include "support/harness.h"
#include "train/optim.h"
#include "train/trainer.h"

#include <cstdlib>
#include <filesystem>
#include <unistd.h>

using namespace kvlab;
using namespace kvlab::test;
namespace fs = std::filesystem;

namespace {

std::string tmp_path(const std::string& name) {
    const auto dir = fs::temp_directory_path() / fmt::format("kvlab_tests_{}", getpid());   // parallel ctest
    fs::create_directories(dir);
    const auto p = dir / name;
    fs::remove(p);
    return p.string();
}

// A small text config; the data file comes from $KVLAB_DATA_DIR (scripts/test.sh sets it).
ExperimentConfig text_config(const std::string& out, int steps, const std::string& attention = "mha") {
    return load_config(std::string(KVLAB_SOURCE_DIR) + "/configs/tiny.yaml",
                       {{"train.steps", std::to_string(steps)},
                        {"train.eval_every", std::to_string(steps)},
                        {"train.threads", "1"},
                        {"model.attention", attention},
                        {"output.path", out}});
}

RunOptions quiet_options(bool overwrite) {
    RunOptions o;
    o.overwrite = overwrite;
    o.progress = false;
    return o;
}

const char* kMqarSmall = R"(
name: mqar-small
model: {attention: mha, d_model: 32, n_layers: 2, n_heads: 4, head_dim: 8, mlp_hidden: 64}
data: {task: mqar, seq_len: 16, num_kv_pairs: 4}
train: {steps: 300, batch_size: 32, lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 30, eval_every: 100, eval_batches: 4, threads: 1}
)";

}  // namespace

TEST_CASE("the learning rate warms up linearly then decays by cosine to min_lr") {
    CHECK(lr_at(0, 100, 1.0, 0.1, 10) == doctest::Approx(0.1));
    CHECK(lr_at(9, 100, 1.0, 0.1, 10) == doctest::Approx(1.0));
    CHECK(lr_at(10, 100, 1.0, 0.1, 10) == doctest::Approx(1.0));
    CHECK(lr_at(99, 100, 1.0, 0.1, 10) == doctest::Approx(0.1));
    CHECK(lr_at(54, 100, 1.0, 0.1, 10) < 0.6);
    CHECK(lr_at(54, 100, 1.0, 0.1, 10) > 0.5);
}

TEST_CASE("adamw matches torch.optim.AdamW's update and decays matrices only") {
    std::vector<float> theta = {1.0f, -2.0f}, g = {0.5f, 0.25f};
    AdamW opt(2, {{0, 1, true}, {1, 1, false}}, 0.9, 0.95, 1e-8, 0.1);
    opt.step(theta.data(), g.data(), 0.01);
    // step 1: m̂ = g, v̂ = g², update = lr · g / (|g| + eps) = lr · sign(g)
    CHECK(theta[0] == doctest::Approx(1.0 * (1 - 0.01 * 0.1) - 0.01).epsilon(1e-6));
    CHECK(theta[1] == doctest::Approx(-2.0 - 0.01).epsilon(1e-6));
}

TEST_CASE("gradient clipping scales to the global norm like torch's clip_grad_norm_") {
    std::vector<float> g = {3.0f, 4.0f};
    CHECK(clip_grad_norm(g.data(), 2, 1.0) == doctest::Approx(5.0));
    CHECK(std::hypot(g[0], g[1]) == doctest::Approx(1.0).epsilon(1e-5));
    std::vector<float> small = {0.3f, 0.4f};
    clip_grad_norm(small.data(), 2, 1.0);
    CHECK(small[0] == 0.3f);
}

TEST_CASE("a short text run drops validation loss far below ln 256 and writes a complete run") {
    const auto out = tmp_path("text.h5");
    auto cfg = text_config(out, 300);
    const auto s = train_run(cfg, quiet_options(false));
    CHECK(s.val_loss < 3.0);   // ln 256 = 5.55 at initialisation
    CHECK(s.val_bits_per_byte == doctest::Approx(s.val_loss / std::log(2.0)));
    const auto runs = read_runs(out);
    REQUIRE(runs.size() == 1);
    const auto& r = runs[0];
    CHECK(r.id == "tiny");
    auto attr = [&](const Attrs& a, const std::string& k) -> AttrValue {
        for (auto& [n, v] : a)
            if (n == k) return v;
        FAIL("missing attribute " << k);
        return AttrValue{};
    };
    CHECK(std::get<std::string>(attr(r.attrs, "status")) == "completed");
    CHECK(std::get<std::string>(attr(r.attrs, "attention")) == "mha");
    CHECK(std::get<int64_t>(attr(r.attrs, "kv_cache_elements_per_token")) == 2 * 2 * 4 * 8);
    CHECK(std::get<int64_t>(attr(r.attrs, "kv_cache_bytes_per_token")) == 4 * 2 * 2 * 4 * 8);
    CHECK(std::get<int64_t>(attr(r.attrs, "n_params")) == s.n_params);
    CHECK(std::get<std::string>(attr(r.attrs, "config")).find("attention: mha") != std::string::npos);
    CHECK(std::get<double>(attr(r.final_attrs, "val_loss")) == doctest::Approx(s.val_loss));
    CHECK(r.train_loss.back() < r.train_loss.front());
    CHECK(r.eval_step.back() == 300);
    // the final weights load back into a model that reproduces the validation loss's batch
    auto p = read_param_set(out, "/runs/tiny/params");
    Transformer<float> m(model_config_from_attrs(p.attrs, out));
    load_param_set(m, p, out);
    CHECK(m.n_params() == s.n_params);
}

TEST_CASE("an mqar run beats chance accuracy") {
    const auto out = tmp_path("mqar.h5");
    auto cfg = load_config_text(kMqarSmall, "mqar-small.yaml", {{"output.path", out}});
    const auto s = train_run(cfg, quiet_options(false));
    REQUIRE(s.val_accuracy);
    CHECK(*s.val_accuracy > 3.0 / 128);   // chance: 1 of 128 values
}

TEST_CASE("the same config, seed and thread count give bit-identical loss curves and weights") {
    const auto a = tmp_path("det_a.h5"), b = tmp_path("det_b.h5");
    for (const char* attention : {"gqa", "mla"}) {
        CAPTURE(attention);
        train_run(text_config(a, 30, attention), quiet_options(true));
        train_run(text_config(b, 30, attention), quiet_options(true));
        const auto ra = read_runs(a), rb = read_runs(b);
        CHECK(ra[0].train_loss == rb[0].train_loss);
        CHECK(ra[0].eval_loss == rb[0].eval_loss);
        const auto pa = read_param_set(a, "/runs/tiny/params"), pb = read_param_set(b, "/runs/tiny/params");
        for (size_t i = 0; i < pa.tensors.size(); ++i) CHECK(pa.tensors[i].data == pb.tensors[i].data);
    }
}

TEST_CASE("training on 2 threads with the batch split follows the unsplit run to round-off") {
    // KVLAB_BATCH_SPLIT=off runs the same steps with the products sharing the threads; the
    // split runs each half batch on its own thread. Same data, same updates up to the order
    // of sums: the curves agree closely, evaluation (loss and MQAR accuracy) included.
    const auto a = tmp_path("split_auto.h5"), b = tmp_path("split_off.h5");
    auto run = [&](const char* mode, const std::string& out) {
        ScopedEnv e("KVLAB_BATCH_SPLIT", mode);
        auto cfg = load_config_text(kMqarSmall, "mqar-small.yaml",
                                    {{"output.path", out}, {"train.threads", "2"}, {"train.steps", "40"},
                                     {"train.eval_every", "20"}});
        train_run(cfg, quiet_options(true));
        return read_runs(out)[0];
    };
    const auto split = run("auto", a), shared = run("off", b);
    REQUIRE(split.train_loss.size() == shared.train_loss.size());
    REQUIRE(split.eval_loss.size() == 2);
    // The two sum in different orders, so the weights differ in their last bits; identical
    // weights would mean the split never ran (the float32 loss curves may well agree).
    const auto pa = read_param_set(a, "/runs/mqar-small/params"), pb = read_param_set(b, "/runs/mqar-small/params");
    REQUIRE(pa.tensors.size() == pb.tensors.size());
    double worst = 0;
    bool differ = false;
    for (size_t i = 0; i < pa.tensors.size(); ++i)
        for (size_t j = 0; j < pa.tensors[i].data.size(); ++j) {
            differ |= pa.tensors[i].data[j] != pb.tensors[i].data[j];
            worst = std::max(worst, std::abs(double(pa.tensors[i].data[j]) - double(pb.tensors[i].data[j])));
        }
    CHECK(differ);
    CHECK(worst < 1e-4);
    for (size_t i = 0; i < split.train_loss.size(); ++i) CHECK(rel_err(split.train_loss[i], shared.train_loss[i]) < 1e-4);
    for (size_t i = 0; i < split.eval_loss.size(); ++i) {
        CHECK(rel_err(split.eval_loss[i], shared.eval_loss[i]) < 1e-4);
        CHECK(std::abs(split.eval_accuracy[i] - shared.eval_accuracy[i]) < 0.01);
    }
}

TEST_CASE("a gradient dump from kvlab gradcheck loads back and reproduces its loss and gradients") {
    for (const char* attention : {"mha", "gqa", "mqa", "mla"}) {
        CAPTURE(attention);
        const auto out = tmp_path(std::string("dump_") + attention + ".h5");
        const std::string cmd = fmt::format("{} gradcheck {}/configs/tiny.yaml --set model.attention={} --dump {} > /dev/null",
                                            KVLAB_BINARY, KVLAB_SOURCE_DIR, attention, out);
        REQUIRE(std::system(cmd.c_str()) == 0);
        const auto d = read_grad_dump(out);
        Transformer<double> m(model_config_from_attrs(d.params.attrs, out));
        load_param_set(m, d.params, out);
        m.zero_grad();
        const double loss = m.forward(d.inputs.data(), d.targets.data(), d.B, d.T);
        CHECK(loss == doctest::Approx(d.loss).epsilon(1e-6));
        m.backward();
        auto g = grads_to_param_set(m);
        REQUIRE(g.tensors.size() == d.grads.tensors.size());
        for (size_t i = 0; i < g.tensors.size(); ++i) {
            CAPTURE(g.tensors[i].name);
            CHECK(g.tensors[i].name == d.grads.tensors[i].name);
            const Eigen::Map<const Eigen::VectorXf> x(g.tensors[i].data.data(), g.tensors[i].data.size()),
                y(d.grads.tensors[i].data.data(), d.grads.tensors[i].data.size());
            CHECK(max_rel_diff(x, y) < 1e-5);
        }
    }
}

TEST_CASE("the embedded default config is configs/mqar.yaml") {
    const auto a = load_config(std::string(KVLAB_SOURCE_DIR) + "/configs/mqar.yaml");
    const auto path = tmp_path("default.yaml");
    const std::string cmd = fmt::format("{} train --dump-config > {}", KVLAB_BINARY, path);
    REQUIRE(std::system(cmd.c_str()) == 0);
    const auto b = load_config(path);
    CHECK(dump_config(a) == dump_config(b));
}

TEST_CASE("gradient dumps match the independent PyTorch reference of model.md (when python3-torch is installed)") {
    if (std::system("/usr/bin/python3 -c 'import torch, h5py' > /dev/null 2>&1") != 0) {
        MESSAGE("skipped: /usr/bin/python3 cannot import torch and h5py (apt-get install python3-torch)");
        return;
    }
    const std::vector<std::string> variants = {"model.attention=mha", "model.attention=gqa", "model.attention=mqa",
                                               "model.attention=mla", "model.attention=mla --set model.q_lora_rank=0",
                                               "model.attention=gqa --set model.tie_embeddings=true",
                                               "model.attention=mla --set model.tie_embeddings=true"};
    for (const auto& v : variants) {
        CAPTURE(v);
        const auto out = tmp_path("ref_dump.h5");
        const std::string dump = fmt::format("{} gradcheck {}/configs/tiny.yaml --set {} --dump {} --no-check > /dev/null",
                                             KVLAB_BINARY, KVLAB_SOURCE_DIR, v, out);
        REQUIRE(std::system(dump.c_str()) == 0);
        const std::string check =
            fmt::format("/usr/bin/python3 {}/scripts/reference/check_grad_dump.py {} --rtol 1e-5 > /dev/null", KVLAB_SOURCE_DIR, out);
        CHECK(std::system(check.c_str()) == 0);
    }
}

TEST_CASE("every shipped config and every point of its sweep validates") {
    for (const auto& entry : fs::directory_iterator(std::string(KVLAB_SOURCE_DIR) + "/configs")) {
        if (entry.path().extension() != ".yaml") continue;
        CAPTURE(entry.path().string());
        ExperimentConfig cfg;
        CHECK_NOTHROW(cfg = load_config(entry.path().string()));
        CHECK_NOTHROW(expand_sweep(cfg));
    }
}
