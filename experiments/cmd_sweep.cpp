// kvlab sweep, report, and the hidden _run-point (one sweep point in a worker process).
#include "cli.h"
#include "dist/mpi.h"
#include "io/results.h"
#include "train/report.h"
#include "train/sweep.h"
#include "train/sweep_mpi.h"
#include "train/trainer.h"

#include <fmt/format.h>
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <sstream>

namespace kvlab::cli {

namespace {
// ---------------------------------------------------------------------------- sweep
const char* kSweepHelp = R"(usage: kvlab sweep CONFIG [--set key=value]... [--jobs N] [--threads T] [--overwrite]
                   [--quiet] [--dry-run]

Runs every point of CONFIG's sweep: block (the Cartesian product of its axes; keys joined
by '+' are tied) and writes each as /runs/<run id> of the results file (output.path,
default results/<name>.h5). Run ids come from the swept values, e.g. attention-mla_seed-1.
Every point is validated before the first one starts: an invalid point is an error (exit 2)
and nothing runs. A config without sweep: runs as a single point.

Points run in separate worker processes, N at a time; each writes its own part file under
results/.<name>.parts/ that is merged into the results file when the worker exits (HDF5
locks a file for one writer). Rerunning the same command resumes: points already
"completed" in the results file are skipped; failed and unfinished ones run again. A point
that fails (an error, a NaN loss, a crash) is recorded with status "failed" and its error,
the sweep goes on, and the exit status is 1 at the end.
Ctrl-C or SIGTERM stops launching points and passes SIGTERM to the running ones, which stop
after their current step (press again to kill them); they are recorded as "interrupted" and
rerun on resume, from their last checkpoint when train.checkpoint_every > 0 (exit status 130
for SIGINT, 143 for SIGTERM). Merges replace the results file by copy-to-temp and rename, so
a kill at any moment leaves every merged run intact (docs/reliability.md).

  --set key=value   override a key of every point (--set sweep.seed=[0,1] replaces an axis)
  --jobs N          worker processes at a time (default 1). On 2 small-model processes
                    beat 1 process with 2 threads.
  --threads T       threads per worker (default: train.threads; when that is 0 and
                    N > 1, cores/N, so N x T <= cores)
  --overwrite       rerun completed points too, replacing them
  --quiet           no worker progress lines (always so when N > 1); one line per point stays
  --dry-run         print the points, their run ids and what a run would do, then exit

Under mpirun (or srun) with N processes, the points are spread over the N ranks: each runs
one point at a time and asks rank 0 for the next; rank 0 also merges every point into the
results file, which must be on a filesystem all ranks share (docs/distributed.md).
--jobs is then 1; --threads defaults to cores per node / ranks per node.
)";

volatile std::sig_atomic_t g_interrupts = 0, g_last_signal = 0;
extern "C" void on_interrupt(int sig) {
    g_interrupts = g_interrupts + 1;
    g_last_signal = sig;
}

// Workers exec /proc/self/exe: this very binary, even if build/kvlab is rebuilt mid-sweep.
std::string self_exe() {
    char buf[4096];
    if (readlink("/proc/self/exe", buf, sizeof buf - 1) <= 0)
        throw Error("sweep: cannot find the kvlab binary (/proc/self/exe is not readable)");
    return "/proc/self/exe";
}

const char* status_name(PointStatus s) {
    switch (s) {
        case PointStatus::completed: return "completed";
        case PointStatus::skipped: return "skipped";
        case PointStatus::failed: return "failed";
        case PointStatus::interrupted: return "interrupted";
        case PointStatus::pending: return "not run";
    }
    return "?";
}

}  // namespace

// The summary of a finished sweep on stdout; the exit status.
static int sweep_summary(const std::vector<ExperimentConfig>& points, const SweepOutcome& out);

// `kvlab sweep` under mpirun: every rank runs this (train/sweep_mpi.h).
static int sweep_distributed(const std::vector<ExperimentConfig>& points, SweepOptions opt, bool dry_run) {
    if (opt.jobs != 1)
        throw Error(fmt::format("sweep: under mpirun each of the {} ranks runs one point at a time; start more ranks "
                                "instead of --jobs {}",
                                dist::size(), opt.jobs));
    if (dry_run) {
        if (dist::root()) {
            fmt::print("{} point(s) -> {}; {} MPI ranks, one point each at a time\n", points.size(),
                       points.front().results_path(), dist::size());
            for (const auto& p : plan_sweep(points, opt.overwrite))
                fmt::print("  {:<48} {}\n", p.run_id, p.status == PointStatus::skipped ? "skip (completed)" : "run");
        }
        return 0;
    }
    opt.exe = self_exe();
    opt.interrupts = &g_interrupts;
    struct sigaction sa {};
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    if (dist::root())
        fmt::print("sweep over {} MPI ranks ({} on this node)\n", dist::size(), dist::local_size());
    const SweepOutcome out = run_sweep_mpi(points, opt);
    if (!dist::root()) return out.interrupted ? 130 : 0;
    return sweep_summary(points, out);
}

int cmd_sweep(int argc, char** argv) {
    if (wants_help(argc, argv, 2)) return fmt::print("{}", kSweepHelp), 0;
    auto a = parse_args(argc, argv, 2, {"jobs", "threads"}, {"overwrite", "quiet", "dry-run"}, "sweep");
    SweepOptions opt;
    const double jobs = a.num("jobs", 1), threads = a.num("threads", 0);
    if (jobs < 1 || jobs != int(jobs)) throw Error(fmt::format("sweep: --jobs must be an integer >= 1, got {}", jobs));
    if (threads < 0 || threads != int(threads))
        throw Error(fmt::format("sweep: --threads must be an integer >= 1, got {}", threads));
    opt.jobs = int(jobs);
    opt.threads = int(threads);
    opt.overwrite = a.flag("overwrite");
    opt.quiet = a.flag("quiet");

    const auto base = load(a, "sweep", false);
    const auto points = expand_sweep(base);   // every point validated, or an Error (exit 2)
    if (dist::active()) return sweep_distributed(points, opt, a.flag("dry-run"));
    const int cores = available_cores();
    const int per = worker_threads(points.front(), opt);
    const int used = opt.jobs * (per > 0 ? per : cores);
    if (used > cores)
        fmt::print(stderr, "note: {} worker(s) x {} thread(s) = {} threads on {} core(s); they will contend\n", opt.jobs,
                   per > 0 ? per : cores, used, cores);

    if (a.flag("dry-run")) {
        const auto plan = plan_sweep(points, opt.overwrite);
        fmt::print("{} point(s) -> {}; {} worker(s) x {} thread(s)\n", points.size(), points.front().results_path(),
                   opt.jobs, per > 0 ? fmt::format("{}", per) : fmt::format("all {}", cores));
        for (const auto& p : plan) {
            std::string what = p.status == PointStatus::skipped ? "skip (completed)"
                               : p.error.empty()                ? "run"
                                                                : fmt::format("rerun (was {})", p.error);
            fmt::print("  {:<48} {}\n", p.run_id, what);
        }
        return 0;
    }

    opt.exe = self_exe();
    opt.interrupts = &g_interrupts;
    struct sigaction sa {}, old_int {}, old_term {};
    sa.sa_handler = on_interrupt;   // no SA_RESTART: poll() returns at once
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    SweepOutcome out;
    try {
        out = run_sweep(points, opt);
    } catch (...) {
        sigaction(SIGINT, &old_int, nullptr);
        sigaction(SIGTERM, &old_term, nullptr);
        throw;
    }
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
    return sweep_summary(points, out);
}

static int sweep_summary(const std::vector<ExperimentConfig>& points, const SweepOutcome& out) {
    const int n_done = out.count(PointStatus::completed), n_skip = out.count(PointStatus::skipped),
              n_fail = out.count(PointStatus::failed), n_left = out.count(PointStatus::pending),
              n_int = out.count(PointStatus::interrupted);
    fmt::print("\nsweep {}: {} point(s): {} completed, {} skipped (already completed), {} failed{}{}; wall {:.1f} s\n",
               points.front().results_path(), points.size(), n_done, n_skip, n_fail,
               n_int ? fmt::format(", {} interrupted", n_int) : "",
               n_left ? fmt::format(", {} not run (interrupted)", n_left) : "", out.wall_seconds);
    if (n_fail) {
        fmt::print("failed:\n");
        for (const auto& p : out.points)
            if (p.status == PointStatus::failed) fmt::print("  {}: {}\n", p.run_id, p.error);
    }
    if (out.interrupted) {
        fmt::print("interrupted: rerun the same command to resume (points not {}: ", status_name(PointStatus::completed));
        std::vector<std::string> ids;
        for (const auto& p : out.points)
            if (p.status == PointStatus::failed || p.status == PointStatus::pending ||
                p.status == PointStatus::interrupted)
                ids.push_back(p.run_id);
        fmt::print("{})\n", fmt::join(ids, ", "));
        return 128 + (g_last_signal ? int(g_last_signal) : SIGINT);
    }
    return n_fail ? 1 : 0;
}

// ---------------------------------------------------------------------------- _run-point
// Hidden: the worker of `kvlab sweep`. Loads a resolved point config (written by the
// sweep) under the original config's name, so relative data paths resolve as they did for
// the sweep, and trains it into its own results file.
int cmd_run_point(int argc, char** argv) {
    const char* usage =
        "usage: kvlab _run-point POINT.yaml --run-id ID --out PART.h5 [--source CONFIG] [--threads T] [--quiet]\n"
        "(internal: one point of `kvlab sweep` in a worker process; --source is the config file the point\n"
        "came from, for messages and relative data paths)\n";
    if (wants_help(argc, argv, 2)) return fmt::print("{}", usage), 0;
    auto a = parse_args(argc, argv, 2, {"source", "run-id", "out", "threads"}, {"quiet"}, "_run-point");
    if (a.positional.size() != 1 || a.opt("run-id").empty() || a.opt("out").empty())
        throw Error(fmt::format("_run-point: expected POINT.yaml, --run-id and --out\n{}", usage));
    std::ifstream in(a.positional[0], std::ios::binary);
    if (!in) throw Error(fmt::format("_run-point: cannot read {}", a.positional[0]));
    std::stringstream text;
    text << in.rdbuf();
    auto cfg = load_config_text(text.str(), a.opt("source", a.positional[0]));
    cfg.run_id = a.opt("run-id");
    cfg.resolved_yaml = dump_config(cfg);   // names the run id (the load above did not know it)
    if (a.options.count("threads")) cfg.train.threads = int(a.num("threads", 0));
    RunOptions opt;
    opt.overwrite = true;
    opt.progress = !a.flag("quiet");
    opt.part_path = a.opt("out");   // the parent merges it into cfg.results_path()
    opt.merge = false;
    opt.stop = install_stop_handlers(true);
    RunSummary s;
    try {
        s = train_run(cfg, opt);
    } catch (const RunFailed& e) {
        fmt::print(stderr, "kvlab _run-point: {}\n", e.what());
        return 1;
    }
    return s.status == "interrupted" ? 128 + s.stop_signal : 0;
}

// ---------------------------------------------------------------------------- report
namespace {
const char* kReportHelp = R"(usage: kvlab report RESULTS.h5 [--format md|csv] [--metric auto|val_loss|val_accuracy]

The comparison table of a results file, in the shape of DeepSeek-V2's Table 1: one row per
attention variant configuration (runs grouped by their config without seed and train.lr),
with how the variant shares K/V heads and reduces the cache, the KV cache per token
(elements, with the paper's formula on the run's dims, and bytes as allocated by the decode
cache), the parameter count, and the capability as mean ± sample std over the seeds:
validation loss, bits per byte (text) and accuracy (MQAR). When a variant was run at
several learning rates, the lr with the best mean metric is picked and named. Failed and
unfinished runs are listed under the table and left out.

  --format md|csv   Markdown table (default) or CSV with a header (failed runs go to stderr)
  --metric M        what picks the learning rate: auto (default: val_accuracy when a
                    variant has it, else val_loss), val_loss or val_accuracy
)";
}  // namespace

int cmd_report(int argc, char** argv) {
    if (wants_help(argc, argv, 2)) return fmt::print("{}", kReportHelp), 0;
    auto a = parse_args(argc, argv, 2, {"format", "metric"}, {}, "report");
    if (a.positional.size() != 1) throw Error("report: expected one RESULTS.h5 (see: kvlab report --help)");
    const std::string format = a.opt("format", "md");
    if (format != "md" && format != "csv") throw Error(fmt::format("report: --format must be md or csv, got \"{}\"", format));
    const auto metric = parse_report_metric(a.opt("metric", "auto"));
    const auto runs = read_runs(a.positional[0]);
    if (runs.empty()) throw Error(fmt::format("report: {} has no runs", a.positional[0]));
    check_report_runs(runs, a.positional[0]);
    const Report rep = build_report(runs, metric);
    if (format == "md") {
        fmt::print("{}", report_markdown(rep));
    } else {
        fmt::print("{}", report_csv(rep));
        for (const auto& [id, err] : rep.failed) fmt::print(stderr, "failed: {}: {}\n", id, err);
        for (const auto& [id, st] : rep.unfinished) fmt::print(stderr, "unfinished: {}: status {}\n", id, st);
    }
    return 0;
}

}  // namespace kvlab::cli
