// Hostile input: every malformed file of tests/hostile/cases.tsv, run through the kvlab
// binary, must end with exit status 2 and one clean message that names the file and says
// what is wrong; never a crash, a hang, a sanitizer report or an internal error.
// The HDF5 cases are made here, at test time, from a small valid checkpoint and results
// file (see make_fixtures); the text cases are committed under tests/hostile/.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include "config/experiment_config.h"
#include "io/h5.h"
#include "io/results.h"
#include "model/checkpoint.h"
#include "model/transformer.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace kvlab;

namespace {

fs::path scratch() {
    const auto dir = fs::temp_directory_path() / fmt::format("kvlab_hostile_{}", getpid());
    fs::create_directories(dir);
    return dir;
}

ModelConfig tiny_gqa() {
    ModelConfig c;
    c.attention = "gqa";
    c.d_model = 16;
    c.n_layers = 1;
    c.n_heads = 4;
    c.head_dim = 4;
    c.mlp_hidden = 24;
    c.plugin = {{"n_kv_heads", 2}};
    return c;
}

void set_attr(Attrs& a, const std::string& k, AttrValue v) {
    for (auto& [key, val] : a)
        if (key == k) return void(val = std::move(v));
    a.emplace_back(k, std::move(v));
}
void drop_attr(Attrs& a, const std::string& k) {
    std::erase_if(a, [&](const auto& kv) { return kv.first == k; });
}

void write_bytes(const fs::path& p, const std::string& bytes) { std::ofstream(p, std::ios::binary) << bytes; }
std::string read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// The malformed HDF5 files (and a few others) that the manifest names as {G}/<file>.
void make_fixtures(const fs::path& g) {
    Transformer<float> m(tiny_gqa());
    m.init(1);
    const ParamSet good = to_param_set(m);
    auto ckpt = [&](const std::string& name, auto&& edit) {
        ParamSet p = good;
        edit(p);
        write_param_set((g / name).string(), "/params", p);
    };
    ckpt("ckpt_good.h5", [](ParamSet&) {});
    ckpt("ckpt_missing_param.h5", [](ParamSet& p) { p.tensors.erase(p.tensors.begin() + 1); });
    ckpt("ckpt_extra_param.h5", [](ParamSet& p) { p.tensors.push_back({"layers.9.attn.wq", {4, 4}, std::vector<float>(16)}); });
    ckpt("ckpt_wrong_shape.h5", [](ParamSet& p) { p.tensors[0].shape = {p.tensors[0].shape[1], p.tensors[0].shape[0]}; });
    ckpt("ckpt_wrong_rank.h5", [](ParamSet& p) { p.tensors[0].shape = {int64_t(p.tensors[0].data.size())}; });
    ckpt("ckpt_no_attention.h5", [](ParamSet& p) { drop_attr(p.attrs, "attention"); });
    ckpt("ckpt_unknown_attention.h5", [](ParamSet& p) { set_attr(p.attrs, "attention", std::string("flash9000")); });
    ckpt("ckpt_format_version.h5", [](ParamSet& p) { set_attr(p.attrs, "format_version", int64_t{2}); });
    ckpt("ckpt_negative_dim.h5", [](ParamSet& p) { set_attr(p.attrs, "d_model", int64_t{-16}); });
    ckpt("ckpt_missing_dim.h5", [](ParamSet& p) { drop_attr(p.attrs, "n_heads"); });
    ckpt("ckpt_huge_dim.h5", [](ParamSet& p) { set_attr(p.attrs, "d_model", int64_t{1} << 40); });
    ckpt("ckpt_huge_model.h5", [](ParamSet& p) { set_attr(p.attrs, "n_layers", int64_t{2000000000}); });
    ckpt("ckpt_fractional_dim.h5", [](ParamSet& p) { set_attr(p.attrs, "head_dim", 4.5); });
    ckpt("ckpt_nan_dim.h5", [](ParamSet& p) { set_attr(p.attrs, "mlp_hidden", std::nan("")); });
    ckpt("ckpt_string_dim.h5", [](ParamSet& p) { set_attr(p.attrs, "d_model", std::string("16")); });
    ckpt("ckpt_vocab.h5", [](ParamSet& p) { set_attr(p.attrs, "vocab_size", int64_t{1000}); });
    ckpt("ckpt_dims_disagree.h5", [](ParamSet& p) { set_attr(p.attrs, "d_model", int64_t{32}); });
    ckpt("ckpt_kv_heads.h5", [](ParamSet& p) { set_attr(p.attrs, "n_kv_heads", int64_t{3}); });
    ckpt("ckpt_nan_param.h5", [](ParamSet& p) { p.tensors[2].data[5] = std::numeric_limits<float>::quiet_NaN(); });
    ckpt("ckpt_inf_param.h5", [](ParamSet& p) { p.tensors[0].data[0] = std::numeric_limits<float>::infinity(); });
    {   // mla attributes over gqa tensors
        ParamSet p = good;
        set_attr(p.attrs, "attention", std::string("mla"));
        set_attr(p.attrs, "kv_lora_rank", int64_t{8});
        set_attr(p.attrs, "q_lora_rank", int64_t{0});
        set_attr(p.attrs, "qk_rope_head_dim", int64_t{2});
        write_param_set((g / "ckpt_wrong_variant.h5").string(), "/params", p);
    }
    {   // a parameter stored as int32, one as float64, a sub-group among the parameters
        write_param_set((g / "ckpt_int_param.h5").string(), "/params", good);
        h5::File f = h5::File::open((g / "ckpt_int_param.h5").string(), h5::Mode::read_write);
        h5::Group p = f.open_group("params");
        p.delete_link(good.tensors[0].name);
        std::vector<int32_t> v(good.tensors[0].data.size(), 1);
        p.write(good.tensors[0].name, good.tensors[0].shape, std::span<const int32_t>(v));
        f.close();
        write_param_set((g / "ckpt_subgroup.h5").string(), "/params", good);
        h5::File f2 = h5::File::open((g / "ckpt_subgroup.h5").string(), h5::Mode::read_write);
        f2.create_group("params/layers");
        f2.close();
    }
    {   // an HDF5 file without /params, and one whose /params is a dataset
        h5::File f = h5::File::open((g / "ckpt_no_params.h5").string(), h5::Mode::truncate);
        f.create_group("weights");
        f.close();
        h5::File f2 = h5::File::open((g / "ckpt_params_dataset.h5").string(), h5::Mode::truncate);
        f2.write_scalar("params", 1.0f);
        f2.close();
    }
    // Truncated HDF5: the first half, the superblock only, and a flipped byte mid-file.
    const std::string bytes = read_bytes(g / "ckpt_good.h5");
    write_bytes(g / "ckpt_truncated.h5", bytes.substr(0, bytes.size() / 2));
    write_bytes(g / "ckpt_superblock_only.h5", bytes.substr(0, 96));
    {   // the superblock's addresses (root group, end of file) overwritten
        std::string b = bytes;
        for (size_t i = 24; i < 96; ++i) b[i] = static_cast<char>(0xA5);
        write_bytes(g / "ckpt_corrupted.h5", b);
    }

    // Results files for `kvlab report` and for checkpoints given as results files.
    auto results = [&](const std::string& name, int n_runs, const std::string& status) {
        for (int r = 0; r < n_runs; ++r) {
            RunLogger log((g / name).string(), fmt::format("run{}", r));
            log.begin_run("name: x\n", "gqa", {{"seed", int64_t{r}}});
            log.log_train(0, 5.0, 1e-3);
            if (status == "completed") log.end_run({{"val_loss", 5.0}}, good);
            if (status == "failed") log.fail_run("diverged");
        }
    };
    results("results_two_runs.h5", 2, "completed");
    results("results_running.h5", 1, "running");
    {
        h5::File f = h5::File::open((g / "results_no_runs.h5").string(), h5::Mode::truncate);
        f.create_group("experiments");
        f.close();
        h5::File f2 = h5::File::open((g / "results_bad_series.h5").string(), h5::Mode::truncate);
        std::vector<int32_t> v = {1, 2, 3};
        f2.create_group("runs/r0/train");
        f2.open_group("runs/r0").write_attr("status", std::string("completed"));
        f2.open_group("runs/r0").write_attr("config", std::string("name: x\n"));
        f2.open_group("runs/r0/train").write("loss", {3}, std::span<const int32_t>(v));
        f2.close();
        h5::File f4 = h5::File::open((g / "results_no_final.h5").string(), h5::Mode::truncate);
        f4.create_group("runs/r0/train");
        f4.open_group("runs/r0").write_attr("status", std::string("completed"));
        f4.open_group("runs/r0").write_attr("config", std::string("name: [unclosed\n"));
        f4.close();
        h5::File f3 = h5::File::open((g / "results_status_int.h5").string(), h5::Mode::truncate);
        f3.create_group("runs/r0/final");
        f3.open_group("runs/r0").write_attr("status", int64_t{7});
        f3.open_group("runs/r0").write_attr("config", std::string("name: [unclosed\n"));
        f3.close();
    }
    results("results_good.h5", 1, "completed");
    const std::string rb = read_bytes(g / "results_good.h5");
    write_bytes(g / "results_truncated.h5", rb.substr(0, rb.size() / 2));

    // Approximator inputs: wrong rank, wrong type, NaN, empty.
    {
        h5::File f = h5::File::open((g / "approx.h5").string(), h5::Mode::truncate);
        std::vector<float> m(12, 1.0f), v1(6, 1.0f), cube(24, 1.0f);
        f.write("one_d", {6}, std::span<const float>(v1));
        f.write("three_d", {2, 3, 4}, std::span<const float>(cube));
        std::vector<int32_t> ints(12, 3);
        f.write("ints", {3, 4}, std::span<const int32_t>(ints));
        m[5] = std::numeric_limits<float>::quiet_NaN();
        f.write("nan", {3, 4}, std::span<const float>(m));
        m[5] = std::numeric_limits<float>::infinity();
        f.write("inf", {3, 4}, std::span<const float>(m));
        f.write("empty", {0, 4}, std::span<const float>());
        f.write_scalar("scalar", 2.0f);
        f.create_group("group");
        std::vector<float> zeros(12, 0.0f);
        f.write("zeros", {3, 4}, std::span<const float>(zeros));
        f.close();
    }
    // A config bigger than any real one (4 MiB of comments).
    write_bytes(g / "huge_config.yaml", "name: x\n" + std::string(5 << 20, '#'));
}

struct Case {
    int line;
    std::string file, command, expect;
};

std::vector<Case> read_manifest(const std::string& prefix) {
    const fs::path manifest = fs::path(KVLAB_SOURCE_DIR) / "tests/hostile/cases.tsv";
    std::ifstream in(manifest);
    REQUIRE_MESSAGE(in.good(), "cannot read " << manifest);
    std::vector<Case> out;
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
        if (line.empty() || line[0] == '#') continue;
        std::vector<std::string> f;
        size_t start = 0;
        for (size_t tab; (tab = line.find('\t', start)) != std::string::npos; start = tab + 1)
            f.push_back(line.substr(start, tab - start));
        f.push_back(line.substr(start));
        REQUIRE_MESSAGE(f.size() == 4, manifest << ":" << n << ": expected 4 tab-separated fields");
        if (f[0].rfind(prefix, 0) == 0) out.push_back({n, f[1], f[2], f[3]});
    }
    return out;
}

std::string substitute(std::string s, const fs::path& g, const fs::path& t) {
    const std::pair<std::string, std::string> subs[] = {
        {"{H}", (fs::path(KVLAB_SOURCE_DIR) / "tests/hostile").string()}, {"{G}", g.string()}, {"{T}", t.string()}};
    for (const auto& [from, to] : subs)
        for (size_t p; (p = s.find(from)) != std::string::npos;) s.replace(p, from.size(), to);
    return s;
}

void run_cases(const std::string& prefix) {
    const fs::path dir = scratch(), g = dir / "gen", t = dir / "out";
    fs::create_directories(g);
    fs::create_directories(t);
    make_fixtures(g);
    const auto cases = read_manifest(prefix);
    REQUIRE(!cases.empty());
    for (const auto& c : cases) {
        const std::string file = substitute(c.file, g, t), cmd = substitute(c.command, g, t);
        const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
        // A hang is a failure too: timeout(1) ends it with status 124.
        // Through a bash script: the manifest uses bash quoting ($'\xff' for raw bytes).
        const fs::path script = dir / "case.sh";
        write_bytes(script, fmt::format("cd '{}' && exec timeout 120 {} {} </dev/null >'{}' 2>'{}'\n", t.string(),
                                        KVLAB_BINARY, cmd, out.string(), err.string()));
        const int rc = std::system(fmt::format("bash '{}'", script.string()).c_str());
        const std::string msg = read_bytes(err);
        INFO("tests/hostile/cases.tsv:" << c.line << ": kvlab " << cmd << "\nstderr:\n" << msg);
        CHECK((WIFEXITED(rc) ? WEXITSTATUS(rc) : -1) == 2);
        CHECK(msg.find(c.expect) != std::string::npos);
        CHECK(msg.find(file) != std::string::npos);
        for (const char* bad : {"AddressSanitizer", "LeakSanitizer", "runtime error", "internal error", "HDF5-DIAG"})
            CHECK(msg.find(bad) == std::string::npos);
        CHECK(msg.find(": error: ") != std::string::npos);
    }
    // Nothing was written into the output folder by any failing command.
    CHECK(fs::is_empty(t));
    if (!std::getenv("KVLAB_KEEP_HOSTILE")) fs::remove_all(dir);
}

}  // namespace

TEST_CASE("hostile configs: exit 2 naming the file") { run_cases("cfg"); }
TEST_CASE("hostile --set overrides: exit 2 naming the override") { run_cases("set"); }
TEST_CASE("hostile data files: exit 2 naming the file") { run_cases("data"); }
TEST_CASE("hostile checkpoints: exit 2 naming the file and the first mismatch") { run_cases("ckpt"); }
TEST_CASE("hostile approximator inputs: exit 2 naming the file and dataset") { run_cases("approx"); }
TEST_CASE("hostile results files: exit 2 naming the file") { run_cases("results"); }
