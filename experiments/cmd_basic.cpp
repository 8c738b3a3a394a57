// kvlab train, list, gradcheck.
#include "attention/registry.h"
#include "cli.h"
#include "core/gemm.h"
#include "core/rng.h"
#include "dist/mpi.h"
#include "io/results.h"
#include "lowrank/lowrank.h"
#include "model/checkpoint.h"
#include "model/gradcheck.h"
#include "model/transformer.h"
#include "tasks/task.h"
#include "train/trainer.h"

#include <fmt/format.h>

#include <cmath>
#include <csignal>

namespace kvlab::cli {

namespace {
// ---------------------------------------------------------------------------- train
const char* kTrainHelp = R"(usage: kvlab train [CONFIG] [--set key=value]... [--dump-config] [--overwrite] [--quiet]

Trains the model of CONFIG (YAML, see configs/ and README "Config keys") and writes the run
to its results file (output.path, default results/<name>.h5) as /runs/<run id>.
Without CONFIG, runs the embedded default (MQAR, no data files needed).

The run is written to a part file and merged into the results file when it ends, by
copy-to-temp and rename, so a kill or a full disk never damages the runs already there
(docs/reliability.md). With train.checkpoint_every = N, a checkpoint is written every N
steps; rerunning the same command resumes from it with the same numbers. Ctrl-C or SIGTERM
stops after the current step (checkpointed when N > 0), records the run as "interrupted"
and exits 130 (SIGINT) or 143 (SIGTERM). A non-finite loss or gradient records the run as
"failed", naming the step and the tensor, and exits 1.

  --set key=value   override any key, e.g. --set model.attention=gqa --set model.n_kv_heads=2
  --dump-config     print the fully resolved config and exit (nothing is trained)
  --overwrite       replace a completed run of the same id in the results file
  --quiet           no progress line

Under mpirun (or srun) with N processes, trains data-parallel: every rank draws the same
global batch and trains on batch_size/N of its rows (batch_size must be divisible by N);
gradients are averaged over the scored tokens of the whole batch before clipping and the
step, so the run matches one process to float round-off. Rank 0 writes the results
(docs/distributed.md).
)";

volatile std::sig_atomic_t g_stop = 0;
extern "C" void on_stop_signal(int sig) { g_stop = sig; }

}  // namespace

// SIGINT and SIGTERM set a flag the run checks after every step; a second one kills
// (SA_RESETHAND restores the default action). A sweep worker ignores SIGINT: Ctrl-C reaches
// the whole process group, and the sweep's parent passes it on as one SIGTERM.
const volatile std::sig_atomic_t* install_stop_handlers(bool sweep_worker) {
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESETHAND | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    if (sweep_worker) sa.sa_handler = SIG_IGN;
    sigaction(SIGINT, &sa, nullptr);
    return &g_stop;
}

int cmd_train(int argc, char** argv) {
    if (wants_help(argc, argv, 2)) return fmt::print("{}", kTrainHelp), 0;
    auto a = parse_args(argc, argv, 2, {}, {"dump-config", "overwrite", "quiet"}, "train");
    auto cfg = load(a, "train", true);
    if (a.flag("dump-config")) {
        if (dist::root()) fmt::print("{}", cfg.resolved_yaml);
        return 0;
    }
    if (!cfg.sweep.empty() && dist::root())
        fmt::print(stderr, "note: {} has a sweep: block; `kvlab train` runs the base config only (use kvlab sweep)\n",
                   cfg.source);
    RunOptions opt;
    opt.overwrite = a.flag("overwrite");
    opt.progress = !a.flag("quiet") && dist::root();
    opt.data_parallel = true;   // over the MPI ranks, when there are several
    opt.stop = install_stop_handlers(false);
    RunSummary s;
    try {
        s = train_run(cfg, opt);
    } catch (const RunFailed& e) {
        if (dist::root())
            fmt::print(stderr, "kvlab train: {}\nthe run is recorded with status \"failed\" in {}\n", e.what(),
                       cfg.results_path());
        return 1;
    }
    if (s.status == "interrupted") {
        if (dist::root())
            fmt::print(stderr, "kvlab train: interrupted at step {} of {}; run {} recorded as \"interrupted\" in {}{}\n",
                       s.steps_done, cfg.train.steps, s.run_id, s.results_path,
                       cfg.train.checkpoint_every > 0 ? "; rerun the same command to resume" : "");
        return 128 + s.stop_signal;
    }
    if (!dist::root()) return 0;
    fmt::print("run {} ({}, {} params, KV cache {} elements/token): val_loss {:.4f} ({:.4f} bits/byte)",
               s.run_id, cfg.model.attention, s.n_params, s.kv_elements_per_token, s.val_loss, s.val_bits_per_byte);
    if (s.val_accuracy) fmt::print(", accuracy {:.4f}", *s.val_accuracy);
    fmt::print("\n{:.0f} tokens/s on {} thread(s){} ({}), {:.1f} s; results: {}:/runs/{}\n", s.tokens_per_second,
               s.threads, dist::active() ? fmt::format(" x {} MPI ranks", dist::size()) : "", gemm::init().brief(),
               s.wall_seconds, s.results_path, s.run_id);
    return 0;
}

// ---------------------------------------------------------------------------- list
int cmd_list(int argc, char** argv) {
    if (wants_help(argc, argv, 2))
        return fmt::print("usage: kvlab list\n\nLists the registered attention plugins, tasks and low-rank approximators.\n"), 0;
    parse_args(argc, argv, 2, {}, {}, "list");
    fmt::print("attention plugins (model.attention):\n");
    for (const auto& e : attention_registry()) {
        std::string keys;
        for (const auto& k : e.own_keys) keys += (keys.empty() ? "" : ", ") + std::string(k.name);
        fmt::print("  {:<10} {}{}\n", e.name, e.description, keys.empty() ? "" : fmt::format(" [keys: {}]", keys));
    }
    fmt::print("tasks (data.task):\n");
    for (const auto& e : task_registry()) {
        std::string keys;
        for (const auto& k : e.own_keys) keys += (keys.empty() ? "" : ", ") + std::string(k);
        fmt::print("  {:<10} {}{}\n", e.name, e.description, keys.empty() ? "" : fmt::format(" [keys: {}]", keys));
    }
    fmt::print("low-rank approximators (kvlab approx / compress --method):\n");
    for (const auto& e : lowrank_registry()) {
        std::string keys;
        for (const auto& k : e.own_keys) keys += (keys.empty() ? "" : ", ") + std::string(k.name);
        fmt::print("  {:<10} {}{}\n", e.name, e.description, keys.empty() ? "" : fmt::format(" [options: {}]", keys));
    }
    return 0;
}

// ---------------------------------------------------------------------------- gradcheck
static const char* kGradcheckHelp = R"(usage: kvlab gradcheck CONFIG --dump FILE [--set key=value]... [--no-check]

Writes model.md's gradient dump for one batch: the initial weights of the configured
seed (/params), d loss / d parameter (/grads), the batch (/batch/inputs, /batch/targets:
the first training batch of the configured task, batch_size x seq_len) and /loss.
Gradients are computed in double precision from the float32 weights.
Then checks every parameter tensor's gradient against a central finite difference in
double (directional derivative along a random direction) and exits 1 if any relative
error exceeds 1e-4.

  --dump FILE   the HDF5 file to write (overwritten)
  --no-check    skip the finite-difference check
)";

int cmd_gradcheck(int argc, char** argv) {
    if (wants_help(argc, argv, 2)) return fmt::print("{}", kGradcheckHelp), 0;
    auto a = parse_args(argc, argv, 2, {"dump"}, {"no-check"}, "gradcheck");
    auto cfg = load(a, "gradcheck", false);
    const std::string dump = a.opt("dump");
    if (dump.empty()) throw Error("gradcheck: --dump FILE is required (see: kvlab gradcheck --help)");
    set_threads(cfg.train.threads);

    auto task = make_task(cfg.data);
    Transformer<float> init(cfg.model);
    init.init(cfg.seed);
    Batch batch;
    Rng data_rng = Rng::stream(cfg.seed, 2);   // the first training batch of this seed
    task->train_batch(data_rng, cfg.train.batch_size, batch);

    Transformer<double> m(cfg.model);
    load_param_set(m, to_param_set(init), "initial weights");
    m.zero_grad();
    const double loss = m.forward(batch.inputs.data(), batch.targets.data(), batch.B, batch.T);
    m.backward();

    GradDump d;
    d.params = to_param_set(init);
    d.grads = grads_to_param_set(m);
    d.grads.attrs = d.params.attrs;
    d.B = batch.B;
    d.T = batch.T;
    d.inputs = batch.inputs;
    d.targets = batch.targets;
    d.loss = static_cast<float>(loss);
    write_grad_dump(dump, d);
    fmt::print("wrote {}: {} parameter tensors, batch {}x{}, loss {:.6f}\n", dump, d.params.tensors.size(), d.B, d.T, loss);
    if (a.flag("no-check")) return 0;

    auto checks = check_gradients(m, batch.inputs.data(), batch.targets.data(), batch.B, batch.T, cfg.seed);
    double worst = 0;
    fmt::print("{:<28} {:>14} {:>14} {:>10}\n", "tensor", "analytic", "numeric", "rel.err");
    for (const auto& c : checks) {
        fmt::print("{:<28} {:>14.6e} {:>14.6e} {:>10.2e}\n", c.name, c.analytic, c.numeric, c.rel_error);
        worst = std::max(worst, c.rel_error);
    }
    const bool ok = worst <= 1e-4;
    fmt::print("finite-difference check (double): worst relative error {:.2e}: {}\n", worst, ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}

}  // namespace kvlab::cli
