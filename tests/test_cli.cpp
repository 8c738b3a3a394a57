// The kvlab executable: exit statuses, messages, and that bad input writes nothing.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace {

// ctest runs test cases as parallel processes: each gets its own folder.
fs::path scratch() {
    const auto dir = fs::temp_directory_path() / fmt::format("kvlab_cli_{}", getpid());
    fs::create_directories(dir);
    return dir;
}

struct Result {
    int status;
    std::string output;   // stdout and stderr
};

Result run(const std::string& args) {
    const auto log = scratch() / "output.log";
    const int rc = std::system(fmt::format("{} {} > {} 2>&1", KVLAB_BINARY, args, log.string()).c_str());
    std::ifstream in(log);
    std::stringstream ss;
    ss << in.rdbuf();
    return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, ss.str()};
}

std::string write_config(const std::string& name, const std::string& text) {
    const auto p = scratch() / name;
    std::ofstream(p) << text;
    return p.string();
}

const char* kBase = R"(name: cli
model:
  attention: gqa
  d_model: 32
  n_layers: 1
  n_heads: 4
  n_kv_heads: 2
  head_dim: 8
  mlp_hidden: 64
data:
  task: mqar
  seq_len: 32
  num_kv_pairs: 4
train:
  steps: 3
  batch_size: 4
  eval_every: 3
  eval_batches: 1
)";

}  // namespace

TEST_CASE("bad configs exit 2 with file, line and key, and create no results file") {
    const auto out = (scratch() / "never.h5").string();
    struct Bad {
        std::string from, to, expect;
    };
    const std::vector<Bad> cases = {
        {"n_kv_heads: 2", "n_kv_heads: 3", ":7:15: model.n_kv_heads: n_heads (4) must be divisible by n_kv_heads (3)"},
        {"attention: gqa", "attention: gqa2", "model.attention: unknown plugin \"gqa2\"; registered: mha, gqa, mqa, mla"},
        {"steps: 3", "steps: three", ":15:10: train.steps: expected an integer"},
        {"  d_model: 32\n", "", "model.d_model"},
        {"seq_len: 32", "seq_len: 1", "data.seq_len"},
        {"task: mqar", "task: txt", "unknown task \"txt\""},
        {"  num_kv_pairs: 4", "  num_kv_pairs: 4\n  bogus: 1", "data.bogus: unknown key"},
        {"task: mqar", "task: text\n  path: /nonexistent/corpus.txt", "data.path"},
    };
    for (const auto& c : cases) {
        std::string text = kBase;
        const auto at = text.find(c.from);
        REQUIRE(at != std::string::npos);
        text.replace(at, c.from.size(), c.to);
        const auto cfg = write_config("bad.yaml", text);
        const auto r = run(fmt::format("train {} --set output.path={}", cfg, out));
        CAPTURE(c.to);
        CAPTURE(r.output);
        CHECK(r.status == 2);
        CHECK(r.output.find(c.expect) != std::string::npos);
        CHECK(r.output.find("bad.yaml") != std::string::npos);
        CHECK_FALSE(fs::exists(out));
    }
}

TEST_CASE("a bad --set override is reported as such") {
    const auto cfg = write_config("good.yaml", kBase);
    const auto r = run(fmt::format("train {} --set train.lr=fast", cfg));
    CHECK(r.status == 2);
    CHECK(r.output.find("<--set>: train.lr") != std::string::npos);
}

TEST_CASE("help, unknown commands and unknown options") {
    CHECK(run("--help").status == 0);
    CHECK(run("train --help").output.find("usage: kvlab train") != std::string::npos);
    CHECK(run("gradcheck --help").status == 0);
    CHECK(run("frobnicate").status == 2);
    const auto r = run("train --frobnicate");
    CHECK(r.status == 2);
    CHECK(r.output.find("unknown option --frobnicate") != std::string::npos);
}

TEST_CASE("kvlab list names every plugin and task") {
    const auto r = run("list");
    CHECK(r.status == 0);
    for (const char* name : {"mha", "gqa", "mqa", "mla", "mqar", "text"}) CHECK(r.output.find(name) != std::string::npos);
}

TEST_CASE("a good config trains and writes its run") {
    const auto out = (scratch() / "good.h5").string();
    fs::remove(out);
    const auto cfg = write_config("good.yaml", kBase);
    const auto r = run(fmt::format("train {} --quiet --set output.path={}", cfg, out));
    CHECK(r.status == 0);
    CHECK(fs::exists(out));
    // the closing line names the thread count and the GEMM backend of the run
    INFO(r.output);
    CHECK(r.output.find(" thread(s) (GEMM: ") != std::string::npos);
    // a completed run is not overwritten without --overwrite
    CHECK(run(fmt::format("train {} --quiet --set output.path={}", cfg, out)).status == 2);
    CHECK(run(fmt::format("train {} --quiet --overwrite --set output.path={}", cfg, out)).status == 0);
}
