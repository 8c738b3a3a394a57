// Training checkpoints: everything a run needs to continue bit-identically from the step it
// was written at (docs/reliability.md, "Checkpoints and resume"). Written every
// train.checkpoint_every steps to <results dir>/<results stem>.ckpt/<run_id>.h5 by
// write-to-temp, fsync and rename, so a checkpoint on disk is always a whole one.
//
//   /             attrs  kind = "kvlab train checkpoint", format_version = 1, run_id,
//                        config (the run's resolved YAML), step (updates done), adam_t,
//                        data_rng (Rng::state of the training-batch stream), threads,
//                        train_seconds, wall_seconds, tokens, last_eval_loss
//                        [, last_eval_accuracy]
//   /params       model.md's parameter layout (hyper-parameters as attributes)
//   /optim/m      AdamW first moments, same names and shapes as /params
//   /optim/v      AdamW second moments
//   /train/step, /train/loss, /train/lr, /eval/step, /eval/loss[, /eval/accuracy]
//                 the series logged so far (int64 steps, float64 values: exactly what the
//                 run logger was given, so replaying them rewrites the same float32 rows)
#pragma once

#include "io/results.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kvlab {

struct TrainCheckpoint {
    std::string run_id, config, data_rng;
    int64_t step = 0, adam_t = 0, threads = 0, tokens = 0;
    double train_seconds = 0, wall_seconds = 0, last_eval_loss = 0;
    std::optional<double> last_eval_accuracy;
    ParamSet params, adam_m, adam_v;
    std::vector<int64_t> train_step, eval_step;
    std::vector<double> train_loss, train_lr, eval_loss;
    std::vector<double> eval_accuracy;   // empty, or one row per evaluation (NaN: none)
};

// "<results dir>/<results stem>.ckpt/<run_id>.h5".
std::string checkpoint_path(const std::string& results, const std::string& run_id);

// Writes c to `path` atomically (temp file next to it, fsync, rename); creates the folder.
void write_train_checkpoint(const std::string& path, const TrainCheckpoint& c);

// kvlab::Error naming the file and what is wrong when it is not a whole kvlab training
// checkpoint (wrong kind or version, a missing part, series of different lengths, moments
// that do not match the parameters).
TrainCheckpoint read_train_checkpoint(const std::string& path);

}  // namespace kvlab
