// One training run from a resolved config to a run group in the results file.
#pragma once

#include "config/experiment_config.h"

#include <cstdint>
#include <optional>
#include <string>

namespace kvlab {

struct RunOptions {
    bool overwrite = false;   // replace a completed run of the same id
    bool progress = true;     // progress line on stderr
    bool data_parallel = false;   // split each batch over the MPI ranks (dist/data_parallel.h)
};

struct RunSummary {
    std::string run_id, results_path;
    double val_loss = 0, val_bits_per_byte = 0;
    std::optional<double> val_accuracy;
    double tokens_per_second = 0, wall_seconds = 0;
    int64_t n_params = 0, kv_elements_per_token = 0, kv_bytes_per_token = 0;
    int threads = 1;
};

// Sets the thread count of our OpenMP loops and Eigen's GEMM (0 = all cores); returns it.
int set_threads(int threads);

// Trains cfg.model on cfg.data for cfg.train.steps, evaluating every eval_every steps,
// and writes /runs/<run_id> of cfg.results_path(). A non-finite loss stops the run
// with status "failed" and throws kvlab::Error naming the step.
RunSummary train_run(const ExperimentConfig& cfg, const RunOptions& opt = {});

}  // namespace kvlab
