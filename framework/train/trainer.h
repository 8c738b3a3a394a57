// One training run from a resolved config to a run group in the results file.
#pragma once

#include "config/experiment_config.h"
#include "core/error.h"

#include <csignal>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace kvlab {

template <class S>
class Transformer;

struct RunOptions {
    bool overwrite = false;   // replace a completed run of the same id
    bool progress = true;     // progress line on stderr
    // Where the run is written while it trains; "" = <results dir>/.<results stem>.parts/<run_id>.h5.
    std::string part_path;
    // Merge the finished (completed, failed or interrupted) run into the results file and
    // delete its part file and checkpoint. A sweep worker passes false: its parent merges.
    bool merge = true;
    // Set (to the signal number) by the caller's SIGINT/SIGTERM handler: the run stops after
    // the step in progress, writes a checkpoint when train.checkpoint_every > 0, and ends
    // with status "interrupted".
    const volatile std::sig_atomic_t* stop = nullptr;
    // Tests only: called after every backward pass with the 1-based step (fault injection).
    std::function<void(int64_t step, Transformer<float>& model)> after_backward;
    bool data_parallel = false;   // split each batch over the MPI ranks (dist/data_parallel.h)
};

struct RunSummary {
    std::string run_id, results_path;
    std::string status;           // "completed" or "interrupted" (a failed run throws RunFailed)
    int stop_signal = 0;          // the signal that interrupted it
    int64_t steps_done = 0;       // updates done when the run ended
    int64_t resumed_from = 0;     // the checkpoint's step when the run resumed, else 0
    double val_loss = 0, val_bits_per_byte = 0;
    std::optional<double> val_accuracy;
    double tokens_per_second = 0, wall_seconds = 0;
    int64_t n_params = 0, kv_elements_per_token = 0, kv_bytes_per_token = 0;
    int threads = 1;
};

// A run that started and then failed (a non-finite loss or gradient): it is recorded with
// status "failed" and this message as `error`. kvlab exits 1 for it, not 2.
class RunFailed : public Error {
public:
    using Error::Error;
};

// Sets the thread count of our OpenMP loops and Eigen's GEMM (0 = all cores); returns it.
int set_threads(int threads);

// Trains cfg.model on cfg.data for cfg.train.steps, evaluating every eval_every steps,
// and writes /runs/<run_id> of cfg.results_path() (docs/reliability.md):
//   * Before training: the results directory is created when missing and must take a new
//     file, an existing results file must be one, and a completed run of the same id is an
//     error unless opt.overwrite (all kvlab::Error, nothing written).
//   * The run is written into its part file; at the end it is merged into the results file
//     by copy-to-temp + rename (io/safe_write.h), so the runs already there survive a kill
//     or a full disk at any moment.
//   * train.checkpoint_every > 0: a checkpoint (io/train_checkpoint.h) every that many
//     steps. A checkpoint of the same run and config resumes the run from its step, with
//     the same numbers as an uninterrupted run on the same thread count.
//   * A non-finite loss or gradient stops the run with status "failed" and throws RunFailed
//     naming the step and the tensor.
RunSummary train_run(const ExperimentConfig& cfg, const RunOptions& opt = {});

// The part file and checkpoint of a run of cfg (see RunOptions::part_path, train_checkpoint.h).
std::string default_part_path(const ExperimentConfig& cfg);

}  // namespace kvlab
