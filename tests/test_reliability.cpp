// Crash safety, checkpoints and resume, signals, non-finite values, disk errors and
// determinism (docs/reliability.md; framework/io/safe_write.cpp, io/train_checkpoint.cpp,
// train/trainer.cpp, train/sweep.cpp), mostly through the built kvlab binary.
#include "config/loader.h"
#include "core/rng.h"
#include "io/results.h"
#include "io/safe_write.h"
#include "io/train_checkpoint.h"
#include "model/transformer.h"
#include "train/trainer.h"
#include "support/process.h"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <thread>

using namespace kvlab;
using namespace kvlab::test;
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// A fresh directory per test case and process (ctest runs cases in parallel processes).
fs::path tmp_dir(const std::string& name) {
    const auto d = fs::temp_directory_path() / fmt::format("kvlab_reliability_tests.{}", getpid()) / name;
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

// A tiny MQAR model: about a millisecond per step on one core.
std::string tiny_config(const std::string& name, const fs::path& out, int steps, int checkpoint_every,
                        const std::string& extra = "") {
    return fmt::format(R"(name: {}
model: {{attention: gqa, d_model: 16, n_layers: 2, n_heads: 4, head_dim: 4, mlp_hidden: 32, n_kv_heads: 2,
        kv_lora_rank: 8, q_lora_rank: 0, qk_rope_head_dim: 4}}
data: {{task: mqar, seq_len: 16, num_kv_pairs: 2}}
train: {{steps: {}, batch_size: 4, warmup_steps: 10, eval_every: {}, eval_batches: 2, log_every: 5, threads: 1,
        checkpoint_every: {}}}
output: {{path: {}}}
{})",
                       name, steps, std::max(1, steps / 4), checkpoint_every, out.string(), extra);
}

fs::path write_file(const fs::path& p, const std::string& text) {
    std::ofstream(p) << text;
    return p;
}

std::string read_text(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// kvlab in its own process group, stdout and stderr to `log`; returns its pid.
pid_t spawn_kvlab(const std::vector<std::string>& args, const fs::path& log) {
    std::fflush(nullptr);   // or the child's freopen flushes our buffered output a second time
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        FILE* f = std::freopen(log.c_str(), "w", stdout);
        (void)f;
        dup2(fileno(stdout), STDERR_FILENO);
        std::vector<char*> argv{const_cast<char*>(KVLAB_BINARY)};
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        execv(KVLAB_BINARY, argv.data());
        _exit(127);
    }
    setpgid(pid, pid);
    return pid;
}

// Polls `ready` every 5 ms for up to `seconds`; false when it never held.
bool wait_for(const std::function<bool()>& ready, double seconds = 60) {
    const auto t0 = Clock::now();
    while (std::chrono::duration<double>(Clock::now() - t0).count() < seconds) {
        if (ready()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
}

// Sends `sig` to the whole process group and reaps the leader; its wait status.
int kill_and_reap(pid_t pid, int sig) {
    kill(-pid, sig);
    int st = 0;
    waitpid(pid, &st, 0);
    return st;
}

std::string text_attr(const Attrs& attrs, const std::string& name) {
    for (const auto& [k, v] : attrs)
        if (k == name)
            if (const auto* s = std::get_if<std::string>(&v)) return *s;
    return {};
}

double real_attr(const Attrs& attrs, const std::string& name) {
    for (const auto& [k, v] : attrs)
        if (k == name) {
            if (const auto* d = std::get_if<double>(&v)) return *d;
            if (const auto* i = std::get_if<int64_t>(&v)) return double(*i);
        }
    return std::nan("");
}

// The file opens with h5dump (when installed) and with our reader; its runs by id.
std::map<std::string, RunRecord> open_results(const fs::path& file) {
    if (run_shell("command -v h5dump >/dev/null").status == 0) {
        const auto r = run_shell(fmt::format("h5dump -H '{}' >/dev/null", file.string()));
        INFO(r.output);
        CHECK(r.status == 0);
    }
    std::map<std::string, RunRecord> out;
    for (auto& r : read_runs(file.string())) {
        CHECK_MESSAGE(out.count(r.id) == 0, "duplicated run ", r.id);
        out[r.id] = std::move(r);
    }
    return out;
}

std::set<std::string> completed_ids(const std::map<std::string, RunRecord>& runs) {
    std::set<std::string> ids;
    for (const auto& [id, r] : runs)
        if (text_attr(r.attrs, "status") == "completed") ids.insert(id);
    return ids;
}

// Same curves, final metrics and parameters, bit for bit.
void check_same_run(const fs::path& a, const fs::path& b, const std::string& id) {
    CAPTURE(id);
    const auto ra = open_results(a), rb = open_results(b);
    REQUIRE(ra.count(id));
    REQUIRE(rb.count(id));
    const RunRecord &x = ra.at(id), &y = rb.at(id);
    CHECK(text_attr(y.attrs, "status") == "completed");
    CHECK(x.train_step == y.train_step);
    CHECK(x.train_loss == y.train_loss);
    CHECK(x.train_lr == y.train_lr);
    CHECK(x.eval_step == y.eval_step);
    CHECK(x.eval_loss == y.eval_loss);
    CHECK(real_attr(x.final_attrs, "val_loss") == real_attr(y.final_attrs, "val_loss"));
    const auto pa = read_param_set(a.string(), "/runs/" + id + "/params");
    const auto pb = read_param_set(b.string(), "/runs/" + id + "/params");
    REQUIRE(pa.tensors.size() == pb.tensors.size());
    for (size_t i = 0; i < pa.tensors.size(); ++i) {
        CAPTURE(pa.tensors[i].name);
        CHECK(pa.tensors[i].data == pb.tensors[i].data);
    }
}

// A part file holding one completed run `id` with `floats` parameters.
void write_part(const fs::path& part, const std::string& id, int floats) {
    RunLogger log(part.string(), id, true);
    log.begin_run("name: x\n", "mha", {{"seed", int64_t{0}}});
    for (int s = 1; s <= 50; ++s) log.log_train(s, 1.0 / s, 1e-3);
    ParamSet p;
    p.tensors.push_back({"embed", {floats}, std::vector<float>(size_t(floats), 0.5f)});
    log.end_run({{"val_loss", 1.0}}, p);
}

}  // namespace

TEST_CASE("an rng state round trips mid-stream, Box-Muller spare included") {
    Rng a(7);
    for (int i = 0; i < 5; ++i) a.normal();   // an odd count leaves a spare
    a.normal();
    a.uniform();
    a.normal();
    Rng b(0);
    REQUIRE(b.set_state(a.state()));
    for (int i = 0; i < 100; ++i) CHECK(a.normal() == b.normal());
    CHECK(!b.set_state("not a state"));
    CHECK(a.below(1000) == b.below(1000));   // a failed set_state left b as it was
}

TEST_CASE("a merge killed at any moment leaves the old or the new results file, never a broken one") {
    const auto d = tmp_dir("merge_kill");
    const fs::path dst = d / "r.h5";
    const int n_parts = 12;
    for (int i = 0; i < n_parts; ++i) write_part(d / fmt::format("p{}.h5", i), fmt::format("run{}", i), 20000);
    std::set<std::string> seen;   // completed runs never disappear
    int next = 0, slow = 1;
    for (int round = 0; next < n_parts && round < 25; ++round) {
        const pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            try {
                for (int i = next; i < n_parts; ++i)
                    merge_run((d / fmt::format("p{}.h5", i)).string(), dst.string(), fmt::format("run{}", i));
                _exit(0);
            } catch (const std::exception& e) {
                fmt::print(stderr, "merge failed: {}\n", e.what());
                _exit(1);
            }
        }
        // Kill at a different moment each round (1 to 150 ms in; a merge takes a few ms),
        // later by 2× after each round that completed no merge (a slow, sanitized or
        // loaded machine), so that the kills also land between and after merges.
        std::this_thread::sleep_for(std::chrono::microseconds(slow * (1000 + (round * 37117) % 149000)));
        kill(pid, SIGKILL);
        int st = 0;
        waitpid(pid, &st, 0);
        CHECK((WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) == 0)));
        if (!fs::exists(dst)) {
            if (slow < 64) slow *= 2;
            continue;
        }
        const auto runs = open_results(dst);
        std::set<std::string> ids;
        for (const auto& [id, r] : runs) ids.insert(id);
        for (const auto& id : seen) CHECK_MESSAGE(ids.count(id), id, " was lost");
        // Merges run in order: the file holds run0..run{k-1} for some k.
        for (int i = 0; i < int(ids.size()); ++i) CHECK(ids.count(fmt::format("run{}", i)));
        if (int(ids.size()) == next && slow < 64) slow *= 2;
        seen = ids;
        next = int(ids.size());
    }
    CHECK(next > 0);   // some merges completed between kills
    for (int i = next; i < n_parts; ++i)   // the rest, unkilled
        merge_run((d / fmt::format("p{}.h5", i)).string(), dst.string(), fmt::format("run{}", i));
    CHECK(open_results(dst).size() == size_t(n_parts));
}

TEST_CASE("a write failure during a merge (file size limit) leaves the results file as it was") {
    const auto d = tmp_dir("merge_efbig");
    const fs::path dst = d / "r.h5";
    write_part(d / "a.h5", "a", 1000);
    write_part(d / "b.h5", "b", 400000);   // 1.6 MB of parameters
    merge_run((d / "a.h5").string(), dst.string(), "a");
    const std::string before = read_text(dst);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        // Writes beyond 512 KB fail with EFBIG, as they would with ENOSPC on a full disk.
        signal(SIGXFSZ, SIG_IGN);
        rlimit lim{512 * 1024, 512 * 1024};
        setrlimit(RLIMIT_FSIZE, &lim);
        try {
            merge_run((d / "b.h5").string(), dst.string(), "b");
            _exit(0);
        } catch (const Error&) {
            _exit(7);
        } catch (...) {
            _exit(8);
        }
    }
    int st = 0;
    waitpid(pid, &st, 0);
    REQUIRE(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 7);   // a kvlab::Error
    CHECK(read_text(dst) == before);
    CHECK(!fs::exists(merge_temp_path(dst.string())));
    const auto runs = open_results(dst);
    CHECK(runs.size() == 1);
    CHECK(runs.count("a"));
}

TEST_CASE("kvlab train killed with SIGKILL resumes from its checkpoint to the numbers of an uninterrupted run") {
    const auto d = tmp_dir("train_kill");
    const fs::path out = d / "r.h5", ref = d / "ref.h5", ckpt = d / "r.ckpt" / "t.h5";
    const auto cfg = write_file(d / "t.yaml", tiny_config("t", out, 1500, 100)).string();
    REQUIRE(run_kvlab(fmt::format("train {} --quiet --set output.path={}", cfg, ref.string())).status == 0);
    // An earlier run in the same results file, which no kill may damage.
    REQUIRE(run_kvlab(fmt::format("train {} --quiet --set name=earlier --set train.steps=40", cfg)).status == 0);
    const auto earlier = read_param_set(out.string(), "/runs/earlier/params");

    for (int kill_no = 0; kill_no < 3; ++kill_no) {
        CAPTURE(kill_no);
        const pid_t pid = spawn_kvlab({"train", cfg, "--quiet"}, d / "log.txt");
        // Kill at a different moment each time: 0, 40 and 80 ms after a checkpoint exists.
        REQUIRE(wait_for([&] { return fs::exists(ckpt); }));
        std::this_thread::sleep_for(std::chrono::milliseconds(40 * kill_no));
        const int st = kill_and_reap(pid, SIGKILL);
        if (WIFEXITED(st)) break;   // it finished first (a very fast machine): nothing to resume
        const auto runs = open_results(out);
        CHECK(completed_ids(runs) == std::set<std::string>{"earlier"});
        CHECK(read_param_set(out.string(), "/runs/earlier/params").tensors[0].data == earlier.tensors[0].data);
    }
    const auto r = run_kvlab(fmt::format("train {}", cfg));
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK(r.output.find("resuming at step") != std::string::npos);
    check_same_run(ref, out, "t");
    CHECK(completed_ids(open_results(out)) == std::set<std::string>{"earlier", "t"});
    CHECK(read_param_set(out.string(), "/runs/earlier/params").tensors[0].data == earlier.tensors[0].data);
    CHECK(!fs::exists(ckpt));            // deleted once the run completed
    CHECK(!fs::exists(d / ".r.parts"));  // part merged and removed
}

TEST_CASE("a sweep killed with SIGKILL at three moments keeps its completed runs and resumes to the reference numbers") {
    const auto d = tmp_dir("sweep_kill");
    const fs::path out = d / "r.h5", ref = d / "ref.h5", ckpt_dir = d / "r.ckpt";
    const auto cfg = write_file(d / "s.yaml", tiny_config("s", out, 600, 100, "sweep:\n  seed: [0, 1, 2]\n")).string();
    {
        const auto r = run_kvlab(fmt::format("sweep {} --quiet --set output.path={}", cfg, ref.string()));
        INFO(r.output);
        REQUIRE(r.status == 0);
    }
    const fs::path log = d / "log.txt";
    auto log_has = [&](const std::string& s) { return read_text(log).find(s) != std::string::npos; };
    auto any_checkpoint = [&] {
        std::error_code ec;
        return fs::is_directory(ckpt_dir, ec) && !fs::is_empty(ckpt_dir, ec);
    };
    // 1: mid-point, once a checkpoint exists; 2: right after the first merge; 3: 30 ms in
    // (starting up, or merging).
    const std::vector<std::function<void()>> moments = {
        [&] { REQUIRE(wait_for(any_checkpoint)); },
        [&] { REQUIRE(wait_for([&] { return log_has("[1/"); })); },
        [&] { std::this_thread::sleep_for(std::chrono::milliseconds(30)); },
    };
    std::set<std::string> completed;
    for (size_t k = 0; k < moments.size(); ++k) {
        CAPTURE(k);
        const pid_t pid = spawn_kvlab({"sweep", cfg, "--quiet"}, log);
        moments[k]();
        const int st = kill_and_reap(pid, SIGKILL);
        if (WIFEXITED(st)) break;   // finished before the kill
        if (!fs::exists(out)) continue;
        const auto now = completed_ids(open_results(out));
        for (const auto& id : completed) CHECK_MESSAGE(now.count(id), id, " was lost");
        completed = now;
    }
    const auto r = run_kvlab(fmt::format("sweep {} --quiet", cfg));
    INFO(r.output);
    CHECK(r.status == 0);
    const auto runs = open_results(out);
    CHECK(runs.size() == 3);
    for (const auto& id : {"seed-0", "seed-1", "seed-2"}) check_same_run(ref, out, id);
    CHECK(!fs::exists(ckpt_dir));
    CHECK(!fs::exists(d / ".r.parts"));
}

TEST_CASE("SIGTERM stops kvlab train after the current step: status interrupted, exit 143, and the rerun resumes") {
    const auto d = tmp_dir("train_term");
    const fs::path out = d / "r.h5", ref = d / "ref.h5", log = d / "log.txt";
    const auto cfg = write_file(d / "t.yaml", tiny_config("t", out, 2000, 100)).string();
    REQUIRE(run_kvlab(fmt::format("train {} --quiet --set output.path={}", cfg, ref.string())).status == 0);
    const pid_t pid = spawn_kvlab({"train", cfg}, log);
    REQUIRE(wait_for([&] { return read_text(log).find("step 100/") != std::string::npos; }));
    kill(pid, SIGTERM);
    int st = 0;
    waitpid(pid, &st, 0);
    INFO(read_text(log));
    REQUIRE(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 143);
    const auto runs = open_results(out);
    REQUIRE(runs.count("t"));
    const RunRecord& run = runs.at("t");
    CHECK(text_attr(run.attrs, "status") == "interrupted");
    CHECK(text_attr(run.attrs, "interrupted_by") == "SIGTERM");
    const double stopped = real_attr(run.attrs, "stopped_at_step");
    CHECK(stopped >= 100);
    CHECK(stopped < 2000);
    CHECK(run.train_step.back() <= stopped);
    // The stop wrote a checkpoint at exactly that step.
    CHECK(read_train_checkpoint((d / "r.ckpt" / "t.h5").string()).step == int64_t(stopped));

    const auto r = run_kvlab(fmt::format("train {}", cfg));
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK(r.output.find(fmt::format("resuming at step {}", int64_t(stopped))) != std::string::npos);
    check_same_run(ref, out, "t");
}

TEST_CASE("SIGTERM to a sweep reaches its workers: running points are recorded interrupted, exit 143") {
    const auto d = tmp_dir("sweep_term");
    const fs::path out = d / "r.h5", log = d / "log.txt";
    const auto cfg = write_file(d / "s.yaml", tiny_config("s", out, 20000, 0, "sweep:\n  seed: [0, 1, 2]\n")).string();
    const pid_t pid = spawn_kvlab({"sweep", cfg, "--jobs", "2"}, log);
    // Both workers have written their part files: they are training.
    REQUIRE(wait_for([&] {
        std::error_code ec;
        int parts = 0;
        for (const auto& e : fs::directory_iterator(d / ".r.parts", ec)) parts += e.path().extension() == ".h5";
        return parts == 2;
    }));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    kill(pid, SIGTERM);   // the parent only
    int st = 0;
    waitpid(pid, &st, 0);
    const std::string text = read_text(log);
    INFO(text);
    REQUIRE(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 143);
    const auto runs = open_results(out);
    CHECK(runs.size() == 2);
    for (const auto& [run_id, run] : runs) {
        const std::string& id = run_id;   // (clang 14 cannot capture a structured binding)
        CAPTURE(id);
        CHECK(text_attr(run.attrs, "status") == "interrupted");
        CHECK(text_attr(run.attrs, "interrupted_by") == "SIGTERM");
    }
    CHECK(text.find("2 interrupted, 1 not run") != std::string::npos);
}

TEST_CASE("a non-finite loss fails kvlab train with exit 1, naming the step") {
    const auto d = tmp_dir("nan_loss");
    const fs::path out = d / "r.h5";
    const auto cfg = write_file(d / "t.yaml", tiny_config("t", out, 200, 0)).string();
    const auto r = run_kvlab(fmt::format("train {} --quiet --set train.lr=1.0e6 --set train.grad_clip=0", cfg));
    INFO(r.output);
    CHECK(r.status == 1);
    const auto runs = open_results(out);
    REQUIRE(runs.count("t"));
    CHECK(text_attr(runs.at("t").attrs, "status") == "failed");
    const std::string error = text_attr(runs.at("t").attrs, "error");
    CHECK(error.find("step ") != std::string::npos);
    CHECK((error.find("the training loss is") != std::string::npos || error.find("the gradient of") != std::string::npos));
    CHECK(r.output.find(error) != std::string::npos);
}

TEST_CASE("a non-finite gradient fails the run naming the step and the parameter") {
    const auto d = tmp_dir("nan_grad");
    const fs::path out = d / "r.h5";
    const auto cfg = load_config_text(tiny_config("t", out, 20, 0), "<test>");
    RunOptions opt;
    opt.progress = false;
    opt.after_backward = [](int64_t step, Transformer<float>& m) {
        if (step != 3) return;
        for (const auto& np : m.params())
            if (np.spec.name == "layers.1.attn.wq") m.grad_data()[np.offset + 5] = std::nanf("");
    };
    CHECK_THROWS_WITH_AS(train_run(cfg, opt), doctest::Contains("step 3: the gradient of layers.1.attn.wq is nan"),
                         RunFailed);
    const auto runs = open_results(out);
    CHECK(text_attr(runs.at("t").attrs, "status") == "failed");
    CHECK(text_attr(runs.at("t").attrs, "error").find("layers.1.attn.wq") != std::string::npos);
}

TEST_CASE("a missing results folder is created, and one that cannot be is an error before training (exit 2)") {
    const auto d = tmp_dir("results_dir");
    const auto cfg = write_file(d / "t.yaml", tiny_config("t", d / "unused.h5", 10, 0)).string();
    const fs::path deep = d / "new" / "deeper" / "r.h5";
    CHECK(run_kvlab(fmt::format("train {} --quiet --set output.path={}", cfg, deep.string())).status == 0);
    CHECK(completed_ids(open_results(deep)) == std::set<std::string>{"t"});

    write_file(d / "a_file", "x");
    const auto r = run_kvlab(fmt::format("train {} --quiet --set output.path={}/a_file/sub/r.h5", cfg, d.string()));
    INFO(r.output);
    CHECK(r.status == 2);
    CHECK(r.output.find("cannot create the results directory") != std::string::npos);
    CHECK(r.output.find("step 1/") == std::string::npos);
}

TEST_CASE("a read-only results folder is an error before training (exit 2) that leaves its runs alone") {
    const auto d = tmp_dir("read_only");
    const fs::path ro = d / "ro";
    fs::create_directories(ro);
    const auto cfg = write_file(d / "t.yaml", tiny_config("t", ro / "r.h5", 10, 0)).string();
    Result r;
    if (geteuid() != 0) {
        REQUIRE(run_kvlab(fmt::format("train {} --quiet --set name=earlier", cfg)).status == 0);
        const std::string before = read_text(ro / "r.h5");
        fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
        r = run_kvlab(fmt::format("train {} --quiet", cfg));
        fs::permissions(ro, fs::perms::owner_all);
        CHECK(read_text(ro / "r.h5") == before);
    } else {
        // root writes through permission bits: mount a read-only tmpfs in a private mount namespace.
        if (run_shell("unshare -m true").status != 0) {
            MESSAGE("skipped: running as root without unshare -m, so no read-only folder can be made");
            return;
        }
        r = run_shell(fmt::format("unshare -m sh -c \"mount -t tmpfs -o ro,size=1m tmpfs '{}' && exec '{}' train {} --quiet\"",
                                  ro.string(), KVLAB_BINARY, cfg));
        if (r.output.find("mount:") != std::string::npos) {
            MESSAGE("skipped: cannot mount a read-only tmpfs: ", r.output);
            return;
        }
    }
    INFO(r.output);
    CHECK(r.status == 2);
    CHECK(r.output.find("cannot write in the results directory") != std::string::npos);
    CHECK((r.output.find("Read-only file system") != std::string::npos ||
           r.output.find("Permission denied") != std::string::npos));
}

TEST_CASE("a write failure mid-run (file size limit, as on a full disk) is an error that keeps earlier runs") {
    const auto d = tmp_dir("full_disk");
    const fs::path out = d / "r.h5";
    const auto cfg = write_file(d / "t.yaml", tiny_config("t", out, 50, 0)).string();
    REQUIRE(run_kvlab(fmt::format("train {} --quiet --set name=earlier", cfg)).status == 0);
    const std::string before = read_text(out);
    // ulimit -f counts 1024-byte blocks; SIGXFSZ ignored, so writes fail with EFBIG instead.
    const long blocks = long(before.size() / 1024 / 2);
    const auto r = run_shell(fmt::format("sh -c \"trap '' XFSZ; ulimit -f {}; exec '{}' train {} --quiet\"", blocks,
                                         KVLAB_BINARY, cfg));
    INFO(r.output);
    CHECK(r.status == 2);   // a clean error, not a crash
    CHECK(r.output.find("File too large") != std::string::npos);
    CHECK(read_text(out) == before);
    CHECK(completed_ids(open_results(out)) == std::set<std::string>{"earlier"});
    CHECK(!fs::exists(merge_temp_path(out.string())));
}

TEST_CASE("two runs with the same config, seed and threads write identical checkpoints and resume identically") {
    const auto d = tmp_dir("determinism");
    std::vector<TrainCheckpoint> ckpts;
    std::vector<fs::path> outs;
    for (int i = 0; i < 2; ++i) {
        const fs::path out = d / fmt::format("r{}.h5", i);
        outs.push_back(out);
        auto cfg = load_config_text(tiny_config("t", out, 120, 1000), "<test>");
        volatile std::sig_atomic_t stop = 0;
        RunOptions opt;
        opt.progress = false;
        opt.stop = &stop;
        opt.after_backward = [&](int64_t step, Transformer<float>&) {
            if (step == 37) stop = SIGTERM;
        };
        const auto s = train_run(cfg, opt);
        CHECK(s.status == "interrupted");
        CHECK(s.steps_done == 37);
        ckpts.push_back(read_train_checkpoint((d / fmt::format("r{}.ckpt", i) / "t.h5").string()));
        opt.stop = nullptr;
        opt.after_backward = nullptr;
        CHECK(train_run(cfg, opt).resumed_from == 37);
    }
    const TrainCheckpoint &a = ckpts[0], &b = ckpts[1];
    CHECK(a.step == 37);
    CHECK(a.adam_t == b.adam_t);
    CHECK(a.data_rng == b.data_rng);
    CHECK(a.train_loss == b.train_loss);
    for (ParamSet TrainCheckpoint::*set : {&TrainCheckpoint::params, &TrainCheckpoint::adam_m, &TrainCheckpoint::adam_v}) {
        REQUIRE((a.*set).tensors.size() == (b.*set).tensors.size());
        for (size_t i = 0; i < (a.*set).tensors.size(); ++i) {
            CAPTURE((a.*set).tensors[i].name);
            CHECK((a.*set).tensors[i].data == (b.*set).tensors[i].data);
        }
    }
    check_same_run(outs[0], outs[1], "t");
}
