// Data-parallel training over MPI ranks (docs/distributed.md): every rank draws the same
// global batch with the same data RNG and trains on its own rows; the gradients are
// summed over the ranks, each weighted by its share of the global batch's scored tokens,
// before clipping and the optimizer step. The result is the gradient of the mean loss
// over all scored tokens of the global batch, as in one process (for MQAR only answer
// positions are scored, so shares are by scored tokens, not 1/ranks), and every rank
// takes the same step. Only rank 0 writes the results file (train/trainer.cpp).
#pragma once

#include "io/results.h"
#include "tasks/task.h"

#include <memory>
#include <optional>
#include <string>

namespace kvlab::dist {

class DataParallel {
public:
    // Over all MPI ranks when `enabled` and MPI is active, else one process (each method
    // then leaves its arguments as they are). ConfigError on train.batch_size when
    // batch_size is not a multiple of the ranks.
    DataParallel(bool enabled, int batch_size);
    int ranks() const { return ranks_; }
    bool root() const { return rank_ == 0; }

    // Keeps this rank's rows of a global batch: rows [rank*B/ranks, (rank+1)*B/ranks).
    void shard(Batch& b) const;
    // After backward on this rank's shard, whose mean loss over its scored tokens is
    // `loss`: replaces grad by the global batch's gradient and returns its mean loss.
    double reduce_gradients(float* grad, int64_t n, double loss, const Batch& shard) const;
    // Sums evaluation tallies (loss times scored tokens, scored, correct) over the ranks.
    void reduce_eval(double& loss_sum, int64_t& scored, int64_t& correct) const;

private:
    int ranks_ = 1, rank_ = 0;
};

// Tokens a batch's loss scores (targets >= 0).
int64_t scored_tokens(const Batch& b);
// Turns a shard's gradient (of the mean loss over its own `scored` tokens) into its part of
// the gradient of the mean over the `total_scored` tokens of the whole batch: the parts of
// all shards sum to the whole batch's gradient.
void weight_shard_gradient(float* grad, int64_t n, int64_t scored, int64_t total_scored);

}  // namespace kvlab::dist
