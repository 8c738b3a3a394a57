// Tests for framework/io: the HDF5 RAII layer, results files (RunLogger / read_runs),
// checkpoints (ParamSet) and gradient dumps, including what h5py and h5dump see.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>

#include "core/error.h"
#include "io/h5.h"
#include "io/results.h"
#include "support/process.h"

using namespace kvlab;
using namespace kvlab::test;
namespace fs = std::filesystem;

namespace {

int shell_status(const std::string& cmd) {
    int status = std::system(cmd.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A python3 that can import h5py: the one on PATH may be a virtualenv/pyenv without it,
// while Debian's python3-h5py lives under /usr/bin/python3.
std::optional<std::string> python_with_h5py() {
    for (const char* py : {"python3", "/usr/bin/python3"})
        if (shell_status(fmt::format("{} -c 'import h5py' >/dev/null 2>&1", py)) == 0) return std::string(py);
    return std::nullopt;
}

// doctest::Contains takes a doctest::String, which has no std::string constructor.
doctest::Contains has(const std::string& s) { return doctest::Contains(s.c_str()); }

bool have_h5dump() { return shell_status("command -v h5dump >/dev/null 2>&1") == 0; }

std::vector<float> iota(size_t n, float scale) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>(i) - 1.0f;
    return v;
}

// A small model.md-style parameter set: dotted names, 1-D and 2-D tensors, attrs of
// every kind.
ParamSet sample_params(float scale = 0.25f) {
    ParamSet p;
    p.attrs = {{"attention", std::string("gqa")}, {"vocab_size", int64_t{256}}, {"d_model", int64_t{3}},
               {"rope_theta", 10000.0},           {"norm_eps", 1e-6},           {"format_version", int64_t{1}}};
    p.tensors = {{"embed", {4, 3}, iota(12, scale)},
                 {"layers.0.attn_norm", {3}, {1.0f, 1.0f, 1.0f}},
                 {"layers.0.attn.wq", {6, 3}, iota(18, -scale)},
                 {"final_norm", {3}, {0.5f, 2.0f, 1e-30f}}};
    return p;
}

// Several KB of YAML with non-ASCII text, as the resolved config attribute.
std::string big_yaml() {
    std::string s = "name: compare-attention  # ünïcode ✓\nseed: 0\n";
    for (int i = 0; i < 300; ++i) s += fmt::format("key_{}: value number {}\n", i, i);
    return s;
}

const AttrValue* find_attr(const Attrs& attrs, const std::string& name) {
    for (const auto& [k, v] : attrs)
        if (k == name) return &v;
    return nullptr;
}

// Writes one completed run "r0" the way the trainer would.
void write_completed_run(const std::string& path, const std::string& id = "r0", double loss0 = 5.5) {
    RunLogger log(path, id);
    log.begin_run(big_yaml(), "gqa", {{"seed", int64_t{7}}, {"n_params", int64_t{1234}}});
    for (int s = 1; s <= 3; ++s) log.log_train(s, loss0 - 0.5 * s, 1e-3 * s);
    log.log_eval(2, 4.25, 0.5);
    log.log_eval(3, 4.0, 0.75);
    log.set_attrs({{"tokens_per_second", 1500.5}, {"wall_seconds", 2.0}, {"kv_cache_elements_per_token", int64_t{64}}});
    log.end_run({{"val_loss", 4.0}, {"val_bits_per_byte", 5.77}, {"val_accuracy", 0.75}}, sample_params());
}

std::string status_of(const RunRecord& r) {
    const AttrValue* s = find_attr(r.attrs, "status");
    return s && std::holds_alternative<std::string>(*s) ? std::get<std::string>(*s) : "<none>";
}

}  // namespace

TEST_CASE("a parameter set round trips dotted names, shapes and attributes of each type") {
    TempDir tmp;
    const std::string file = tmp / "ckpt.h5";
    const ParamSet p = sample_params();
    write_param_set(file, "/params", p);
    const ParamSet q = read_param_set(file, "/params");
    CHECK(q.attrs == p.attrs);  // same values, same types, in the order written
    REQUIRE(q.tensors.size() == p.tensors.size());
    for (size_t i = 0; i < p.tensors.size(); ++i) {
        CAPTURE(p.tensors[i].name);
        CHECK(q.tensors[i].name == p.tensors[i].name);
        CHECK(q.tensors[i].shape == p.tensors[i].shape);
        CHECK(q.tensors[i].data == p.tensors[i].data);  // float32 stored exactly
    }
}

TEST_CASE("write_param_set stamps format_version and replaces an existing group") {
    TempDir tmp;
    const std::string file = tmp / "ckpt.h5";
    ParamSet p = sample_params();
    p.attrs.pop_back();  // no format_version
    write_param_set(file, "/params", p);
    ParamSet q = read_param_set(file, "/params");
    REQUIRE(find_attr(q.attrs, "format_version"));
    CHECK(*find_attr(q.attrs, "format_version") == AttrValue{int64_t{1}});

    ParamSet smaller;
    smaller.tensors = {{"embed", {2, 2}, {1, 2, 3, 4}}};
    write_param_set(file, "/params", smaller);
    write_param_set(file, "/other/params", p);  // a second, nested group in the same file
    q = read_param_set(file, "/params");
    REQUIRE(q.tensors.size() == 1);
    CHECK(q.tensors[0].shape == std::vector<int64_t>{2, 2});
    CHECK(read_param_set(file, "/other/params").tensors.size() == p.tensors.size());
}

TEST_CASE("read_param_set names a missing file, a missing group and non-float32 data") {
    TempDir tmp;
    const std::string file = tmp / "ckpt.h5";
    CHECK_THROWS_WITH_AS(read_param_set(file, "/params"), has(file), Error);
    write_param_set(file, "/params", sample_params());
    CHECK_THROWS_WITH_AS(read_param_set(file, "/nope"), has("/nope"), Error);
    {
        h5::File f = h5::File::open(file, h5::Mode::read_write);
        h5::Group g = f.open_group("params");
        const std::vector<int32_t> ints = {1, 2, 3};
        g.write("layers.1.mlp_norm", {3}, std::span<const int32_t>(ints));
    }
    CHECK_THROWS_WITH_AS(read_param_set(file, "/params"), has("/params/layers.1.mlp_norm"), Error);
    CHECK_THROWS_WITH_AS(read_param_set(file, "/params"), has("expected float32"), Error);
}

TEST_CASE("a gradient dump round trips") {
    TempDir tmp;
    const std::string file = tmp / "dump.h5";
    GradDump d;
    d.params = sample_params();
    d.grads.tensors = d.params.tensors;
    for (auto& t : d.grads.tensors)
        for (auto& x : t.data) x = x * 1e-3f + 1e-7f;
    d.B = 2;
    d.T = 3;
    d.inputs = {1, 2, 3, 255, 0, 7};
    d.targets = {2, 3, -1, -1, 7, 9};
    d.loss = 5.4321f;
    write_grad_dump(file, d);
    write_grad_dump(file, d);  // replaces the file rather than failing on existing objects

    const GradDump e = read_grad_dump(file);
    CHECK(e.params.attrs == d.params.attrs);
    CHECK(e.grads.attrs.empty());
    REQUIRE(e.grads.tensors.size() == d.grads.tensors.size());
    for (size_t i = 0; i < d.grads.tensors.size(); ++i) {
        CHECK(e.params.tensors[i].data == d.params.tensors[i].data);
        CHECK(e.grads.tensors[i].name == d.grads.tensors[i].name);
        CHECK(e.grads.tensors[i].data == d.grads.tensors[i].data);
    }
    CHECK(e.B == 2);
    CHECK(e.T == 3);
    CHECK(e.inputs == d.inputs);
    CHECK(e.targets == d.targets);
    CHECK(e.loss == d.loss);
}

TEST_CASE("read_grad_dump names the missing part") {
    TempDir tmp;
    const std::string file = tmp / "dump.h5";
    write_param_set(file, "/params", sample_params());
    CHECK_THROWS_WITH_AS(read_grad_dump(file), has("/grads"), Error);
}

TEST_CASE("RunLogger writes a run that read_runs reads back") {
    TempDir tmp;
    const std::string file = tmp / "results.h5";
    write_completed_run(file);

    const auto runs = read_runs(file);
    REQUIRE(runs.size() == 1);
    const RunRecord& r = runs[0];
    CHECK(r.id == "r0");
    CHECK(status_of(r) == "completed");
    REQUIRE(find_attr(r.attrs, "config"));
    CHECK(*find_attr(r.attrs, "config") == AttrValue{big_yaml()});
    CHECK(*find_attr(r.attrs, "attention") == AttrValue{"gqa"});
    CHECK(*find_attr(r.attrs, "seed") == AttrValue{int64_t{7}});
    CHECK(*find_attr(r.attrs, "tokens_per_second") == AttrValue{1500.5});
    CHECK(find_attr(r.attrs, "error") == nullptr);

    CHECK(r.train_step == std::vector<int64_t>{1, 2, 3});
    REQUIRE(r.train_loss.size() == 3);
    REQUIRE(r.train_lr.size() == 3);
    for (int s = 1; s <= 3; ++s) {
        CHECK(r.train_loss[s - 1] == static_cast<float>(5.5 - 0.5 * s));  // stored as float32
        CHECK(r.train_lr[s - 1] == static_cast<float>(1e-3 * s));
    }
    CHECK(r.eval_step == std::vector<int64_t>{2, 3});
    CHECK(r.eval_loss == std::vector<double>{4.25, 4.0});
    CHECK(r.eval_accuracy == std::vector<double>{0.5, 0.75});

    CHECK(r.final_attrs == Attrs{{"val_loss", 4.0}, {"val_bits_per_byte", 5.77}, {"val_accuracy", 0.75}});
    const ParamSet p = read_param_set(file, "/runs/r0/params");
    CHECK(p.tensors.size() == sample_params().tensors.size());
    CHECK(p.tensors[2].name == "layers.0.attn.wq");
}

TEST_CASE("runs are listed in the order they were written") {
    TempDir tmp;
    const std::string file = tmp / "results.h5";
    for (const char* id : {"zeta", "alpha", "mid"}) write_completed_run(file, id);
    const auto runs = read_runs(file);
    REQUIRE(runs.size() == 3);
    CHECK(runs[0].id == "zeta");
    CHECK(runs[1].id == "alpha");
    CHECK(runs[2].id == "mid");
}

TEST_CASE("eval accuracy rows stay aligned with eval steps when some evaluations lack one") {
    TempDir tmp;
    const std::string file = tmp / "results.h5";
    {
        RunLogger log(file, "r0");
        log.begin_run("seed: 0\n", "mha", {});
        log.log_eval(10, 3.0, std::nullopt);
        log.log_eval(20, 2.5, 0.25);
        log.log_eval(30, 2.0, std::nullopt);
    }
    const auto r = read_runs(file).at(0);
    CHECK(r.eval_step == std::vector<int64_t>{10, 20, 30});
    REQUIRE(r.eval_accuracy.size() == 3);
    CHECK(std::isnan(r.eval_accuracy[0]));
    CHECK(r.eval_accuracy[1] == 0.25);
    CHECK(std::isnan(r.eval_accuracy[2]));
}

TEST_CASE("a completed run is kept unless overwrite is given") {
    TempDir tmp;
    const std::string file = tmp / "results.h5";
    write_completed_run(file, "r0", 5.5);
    CHECK_THROWS_WITH_AS(RunLogger(file, "r0"), has("run 'r0' already completed in " + file), Error);
    CHECK(read_runs(file).at(0).train_loss.size() == 3);  // untouched by the refused attempt
    {
        RunLogger log(file, "r0", /*overwrite=*/true);
        log.begin_run("seed: 1\n", "mha", {});
        log.log_train(1, 9.0, 0.1);
        log.end_run({{"val_loss", 9.0}}, ParamSet{});
    }
    const auto runs = read_runs(file);
    REQUIRE(runs.size() == 1);
    CHECK(runs[0].train_loss == std::vector<double>{9.0});
    CHECK(*find_attr(runs[0].attrs, "attention") == AttrValue{"mha"});
}

TEST_CASE("a failed or unfinished run is replaced without overwrite") {
    TempDir tmp;
    const std::string file = tmp / "results.h5";
    {
        RunLogger log(file, "failed");
        log.begin_run("seed: 0\n", "mla", {});
        log.fail_run("loss became NaN at step 12");
    }
    {
        RunLogger log(file, "unfinished");
        log.begin_run("seed: 0\n", "mla", {});
        log.log_train(1, 3.0, 1e-3);
    }  // destroyed without end_run or fail_run
    auto runs = read_runs(file);
    REQUIRE(runs.size() == 2);
    CHECK(status_of(runs[0]) == "failed");
    CHECK(*find_attr(runs[0].attrs, "error") == AttrValue{"loss became NaN at step 12"});
    CHECK(status_of(runs[1]) == "running");
    CHECK(runs[1].train_step == std::vector<int64_t>{1});

    { RunLogger again(file, "failed"); }
    { RunLogger again(file, "unfinished"); }
    runs = read_runs(file);
    REQUIRE(runs.size() == 2);
    CHECK(status_of(runs[0]) == "running");
    CHECK(find_attr(runs[0].attrs, "error") == nullptr);
    CHECK(runs[1].train_step.empty());
}

TEST_CASE("a process killed mid-run leaves a readable file with status running") {
    TempDir tmp;
    const std::string file = tmp / "results.h5";
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        // The child never returns into doctest: _exit skips destructors and HDF5's
        // atexit close, as SIGKILL would.
        try {
            RunLogger log(file, "r0");
            log.begin_run(big_yaml(), "mha", {{"seed", int64_t{0}}});
            for (int s = 1; s <= 5; ++s) log.log_train(s, 4.0, 1e-3);
            log.log_eval(5, 3.5, std::nullopt);
            _exit(0);
        } catch (...) {
            _exit(1);
        }
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);

    const auto runs = read_runs(file);
    REQUIRE(runs.size() == 1);
    CHECK(status_of(runs[0]) == "running");
    CHECK(runs[0].train_step == std::vector<int64_t>{1, 2, 3, 4, 5});
    CHECK(runs[0].eval_loss == std::vector<double>{3.5});
    if (have_h5dump()) CHECK(shell_status(fmt::format("h5dump -H '{}' >/dev/null 2>&1", file)) == 0);
    if (auto py = python_with_h5py())
        CHECK(shell_status(
                  fmt::format("{} -c \"import h5py; h5py.File('{}', 'r')['runs/r0/train/step'][:]\"", *py, file)) == 0);
}

TEST_CASE("a missing parent directory is an error naming it") {
    TempDir tmp;
    const std::string dir = tmp / "no_such_dir";
    CHECK_THROWS_WITH_AS(RunLogger(dir + "/results.h5", "r0"), has(dir), Error);
    CHECK_THROWS_WITH_AS(write_param_set(dir + "/ckpt.h5", "/params", sample_params()), has(dir), Error);
    CHECK_FALSE(fs::exists(dir));
}

TEST_CASE("a file that is not HDF5 gives an error naming it") {
    TempDir tmp;
    const std::string file = tmp / "notes.txt";
    std::ofstream(file) << "not an HDF5 file\n";
    CHECK_THROWS_WITH_AS(read_runs(file), has(file), Error);
    CHECK_THROWS_WITH_AS(read_runs(file), has("not an HDF5 file"), Error);
    CHECK_THROWS_WITH_AS(read_param_set(file, "/params"), has(file), Error);
    CHECK_THROWS_WITH_AS(read_grad_dump(file), has(file), Error);
    CHECK_THROWS_WITH_AS(RunLogger(file, "r0"), has(file), Error);
    CHECK_THROWS_WITH_AS(read_runs(tmp / "missing.h5"), has("missing.h5"), Error);
}

TEST_CASE("an HDF5 file without /runs is not a results file, and RunLogger leaves it alone") {
    TempDir tmp;
    const std::string file = tmp / "ckpt.h5";
    write_param_set(file, "/params", sample_params());
    CHECK_THROWS_WITH_AS(read_runs(file), has("not a kvlab results file"), Error);
    CHECK_THROWS_WITH_AS(RunLogger(file, "r0"), has("not a kvlab results file"), Error);
    CHECK_THROWS_WITH_AS(RunLogger(tmp / "results.h5", "a/b"), has("invalid run id"), Error);
}

TEST_CASE("h5 attributes are replaced in place and read back in creation order") {
    TempDir tmp;
    const std::string file = tmp / "a.h5";
    {
        h5::File f = h5::File::open(file, h5::Mode::truncate);
        h5::Group g = f.require_group("a/b/c");  // intermediate groups created
        g.write_attrs({{"z", std::string("x")}, {"a", int64_t{1}}, {"m", 2.5}});
        g.write_attr("z", std::string("a much longer string than before"));  // same type: stays first
        g.write_attr("a", 3.5);  // int64 -> float64: replaced, moves to the end
        CHECK(f.exists("/a/b/c"));
        CHECK(f.exists("a/b"));
        CHECK_FALSE(f.exists("a/x/c"));
        CHECK(f.is_group("a/b"));
        CHECK_FALSE(f.is_dataset("a/b"));
        CHECK_THROWS_WITH_AS(f.create_group("a/b"), has("already exists"), Error);
    }
    h5::File f = h5::File::open(file, h5::Mode::read_only);
    CHECK(f.open_group("a/b/c").read_attrs() ==
          h5::Values{{"z", std::string("a much longer string than before")}, {"m", 2.5}, {"a", 3.5}});
    CHECK_THROWS_WITH_AS(f.open_group("a/b/c").read_attr("nope"), has("nope"), Error);
}

TEST_CASE("h5 errors name the file and the object path") {
    TempDir tmp;
    const std::string file = tmp / "a.h5";
    h5::File f = h5::File::open(file, h5::Mode::truncate);
    h5::Group g = f.require_group("runs/r0");
    const std::vector<float> x = {1, 2};
    g.write("loss", {2}, std::span<const float>(x));
    // Creating an existing dataset is an HDF5-level failure: the message must still
    // carry our context, and HDF5's reason in brackets.
    CHECK_THROWS_WITH_AS(g.write("loss", {2}, std::span<const float>(x)),
                         has(fmt::format("'/runs/r0/loss' in '{}'", file)), Error);
    CHECK_THROWS_WITH_AS(g.open_dataset("missing"), has("/runs/r0/missing"), Error);
    CHECK_THROWS_WITH_AS(g.open_dataset("loss").read_i32(), has("is float32; expected int32"), Error);
}

TEST_CASE("h5 series grow by appends and keep a scalar dataset scalar") {
    TempDir tmp;
    h5::File f = h5::File::open(tmp / "s.h5", h5::Mode::truncate);
    h5::Dataset s = f.create_series("steps", h5::DType::i32, 4);
    std::vector<int64_t> all;
    for (int64_t i = 0; i < 10; ++i) {  // crosses chunk boundaries (4 rows per chunk)
        s.append(std::span<const int64_t>(&i, 1));
        all.push_back(i);
    }
    CHECK(s.shape() == std::vector<int64_t>{10});
    CHECK(s.dtype() == h5::DType::i32);
    CHECK(s.read_as_i64() == all);
    h5::Dataset l = f.write_scalar("loss", 1.5f);
    CHECK(l.shape().empty());
    CHECK(l.read_f32() == std::vector<float>{1.5f});
}

TEST_CASE("h5py reads the strings as str and the datasets with the contract's dtypes") {
    auto py = python_with_h5py();
    if (!py) {
        MESSAGE("skipped: no python3 with h5py found");
        return;
    }
    TempDir tmp;
    const std::string results = tmp / "results.h5", dump = tmp / "dump.h5", script = tmp / "check.py";
    write_completed_run(results);
    GradDump d;
    d.params = sample_params();
    d.grads = sample_params(0.5f);
    d.grads.attrs.clear();
    d.B = 2;
    d.T = 3;
    d.inputs = {1, 2, 3, 4, 5, 6};
    d.targets = {2, 3, 4, 5, 6, -1};
    d.loss = 2.5f;
    write_grad_dump(dump, d);
    std::ofstream(script) << R"PY(
import sys, h5py, numpy as np
results, dump = sys.argv[1], sys.argv[2]
with h5py.File(results, "r") as f:
    r = f["runs/r0"]
    for k in ("config", "attention", "status"):
        assert type(r.attrs[k]) is str, (k, type(r.attrs[k]))
    assert "ünïcode ✓" in r.attrs["config"] and len(r.attrs["config"]) > 4000
    assert r.attrs["status"] == "completed"
    assert isinstance(r.attrs["seed"], np.int64), type(r.attrs["seed"])
    assert isinstance(r.attrs["tokens_per_second"], np.float64), type(r.attrs["tokens_per_second"])
    assert r["train/step"].dtype == np.int32 and r["eval/step"].dtype == np.int32
    for k in ("train/loss", "train/lr", "eval/loss", "eval/accuracy"):
        assert r[k].dtype == np.float32 and r[k].maxshape == (None,), k
    assert list(r["train/step"][:]) == [1, 2, 3]
    assert isinstance(r["final"].attrs["val_loss"], np.float64)
    p = r["params"]
    assert type(p.attrs["attention"]) is str and p.attrs["format_version"] == 1
    # h5py follows the tracked creation order, i.e. the order the ParamSet listed them
    assert list(p.keys()) == ["embed", "layers.0.attn_norm", "layers.0.attn.wq", "final_norm"], list(p.keys())
    assert p["layers.0.attn.wq"].dtype == np.float32 and p["layers.0.attn.wq"].shape == (6, 3)
with h5py.File(dump, "r") as f:
    assert f["loss"].shape == () and f["loss"].dtype == np.float32 and f["loss"][()] == 2.5
    assert f["batch/inputs"].dtype == np.int32 and f["batch/inputs"].shape == (2, 3)
    assert f["batch/targets"][1, 2] == -1
    assert f["grads/embed"].shape == f["params/embed"].shape == (4, 3)
    assert np.array_equal(f["grads/embed"][:].ravel(), 0.5 * np.arange(12, dtype=np.float32) - 1)
    assert type(f["params"].attrs["attention"]) is str
)PY";
    CHECK(shell_status(fmt::format("{} '{}' '{}' '{}'", *py, script, results, dump)) == 0);
}

TEST_CASE("h5dump reads the files") {
    if (!have_h5dump()) {
        MESSAGE("skipped: h5dump is not on PATH");
        return;
    }
    TempDir tmp;
    const std::string results = tmp / "results.h5", ckpt = tmp / "ckpt.h5";
    write_completed_run(results);
    write_param_set(ckpt, "/params", sample_params());
    CHECK(shell_status(fmt::format("h5dump -H '{}' >/dev/null", results)) == 0);
    CHECK(shell_status(fmt::format("h5dump -H '{}' >/dev/null", ckpt)) == 0);
}
