// Running a sweep (config.md, "sweep:"): the points of expand_sweep, N at a time, each in
// its own worker process, merged into the results file as they finish.
//
// Why processes, not threads: two single-threaded processes gave 1.4-1.7x the throughput of
// one two-threaded process on these small models (measured on a 2-core machine), and
// HDF5 1.10 locks a file against every other process while one has it open for writing,
// which a RunLogger does for a whole run. So each worker writes its own part file and the
// parent, the only writer of the results file, copies the run in when the worker exits:
//
//   <results dir>/.<results stem>.parts/<run_id>.yaml   the point's resolved config (input)
//   <results dir>/.<results stem>.parts/<run_id>.h5     the worker's results file (output)
//   <results dir>/.<results stem>.parts/lock            flock'ed by the parent while it runs
//
// The worker is the kvlab binary itself (`kvlab _run-point`, see experiments/cmd_sweep.cpp).
// The parent merges a part with io/safe_write.h's merge_run (copy the results file to a
// temporary name, copy the run in, rename over), so a SIGKILL of the parent or a worker at
// any moment leaves a results file holding every run merged before it. Both part files are
// deleted once the run is merged, and so is the run's training checkpoint when it completed.
//
// Resume: a point whose run is "completed" in the results file is skipped (unless
// overwrite); failed, interrupted, unfinished ("running") and missing ones run again and
// replace the old group, continuing from their training checkpoint
// (<results stem>.ckpt/<run_id>.h5, train.checkpoint_every) when there is one. Failure: a
// worker that throws (NaN loss, ...), exits non-zero or dies by a signal leaves its run in
// the results file with status "failed" and `error` (the run's own error, else the worker's
// last stderr line, else "process exited with signal N"); the other points go on.
// Interruption: SIGINT/SIGTERM to the parent is passed on to the workers as SIGTERM; each
// stops after its current step, checkpoints (when enabled) and is merged with status
// "interrupted".
#pragma once

#include "config/experiment_config.h"

#include <csignal>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace kvlab {

class RemoteWorkers;

struct SweepOptions {
    std::string exe;        // the kvlab binary the workers exec (kvlab sweep: "/proc/self/exe", itself)
    int jobs = 1;           // workers at a time
    int threads = 0;        // per worker; 0 = the config's train.threads, or cores/jobs when that is 0 and jobs > 1
    bool overwrite = false; // rerun completed points too
    bool quiet = false;     // do not forward the workers' progress lines (never forwarded when jobs > 1)
    // Incremented by the caller's SIGINT/SIGTERM handler. 1: launch nothing more, send SIGTERM
    // to the running workers and wait for them; 2: SIGKILL them.
    const volatile std::sig_atomic_t* interrupts = nullptr;
    // Distributed sweeps (train/sweep_mpi.h): other processes that take points from this
    // sweep's queue too; their finished points are merged like those of local workers.
    RemoteWorkers* remote = nullptr;
};

enum class PointStatus { pending, completed, skipped, failed, interrupted };

struct PointOutcome {
    std::string run_id, results_path;
    PointStatus status = PointStatus::pending;   // pending: not run (the sweep was interrupted)
    std::string error;                           // failed and interrupted points
    double seconds = 0;
    std::optional<double> val_loss, val_accuracy;
};

struct SweepOutcome {
    std::vector<PointOutcome> points;   // in sweep order
    bool interrupted = false;
    double wall_seconds = 0;
    int count(PointStatus s) const;
};

// The number of CPUs this process may run on (its affinity mask).
int available_cores();
// The thread count each worker gets for `point` (0 = all cores, as train.threads).
int worker_threads(const ExperimentConfig& point, const SweepOptions& opt);
// "<results dir>/.<results stem>.parts" of a point.
std::string parts_dir(const ExperimentConfig& point);
// What run_sweep would do with each point without running anything: skipped (completed in
// the results file, and not overwrite) or pending. `error` holds the existing run's status
// ("failed", "running") when there is one.
std::vector<PointOutcome> plan_sweep(const std::vector<ExperimentConfig>& points, bool overwrite);

// Runs the points (already validated: expand_sweep) and returns what happened to each.
// Prints "skip <id> (completed)" and one line per finished point on stdout, and (jobs 1,
// not quiet) the workers' progress lines on stderr. kvlab::Error only for problems that
// stop the whole sweep (another sweep holds the lock, a results file that is not one).
SweepOutcome run_sweep(const std::vector<ExperimentConfig>& points, const SweepOptions& opt);

// Writes a point's resolved config into its parts dir, removes a stale part file, and
// returns the command line of its worker (`kvlab _run-point ...`), as run_sweep starts it.
std::vector<std::string> prepare_point(const ExperimentConfig& point, const SweepOptions& opt);

// Processes outside run_sweep that run points of its queue (train/sweep_mpi.cpp: the other
// MPI ranks). run_sweep calls poll about every 50 ms while it runs and goes on while busy.
class RemoteWorkers {
public:
    struct Finished {
        size_t index;            // into the points
        int wait_status;         // of the point's worker process, as waitpid gives it
        std::string last_line;   // its last stderr line
        double seconds;
    };
    virtual ~RemoteWorkers() = default;
    // Hands out points to whoever asks for one: next() gives the index of the next point
    // to run, or nothing when there is none left (or the sweep is stopping). Returns the
    // points finished elsewhere since the last call.
    virtual std::vector<Finished> poll(const std::function<std::optional<size_t>()>& next) = 0;
    // True while points run elsewhere or a process still waits for an answer.
    virtual bool busy() const = 0;
};

}  // namespace kvlab
