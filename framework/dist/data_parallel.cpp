// Data-parallel training over MPI ranks (see data_parallel.h).
#include "dist/data_parallel.h"

#include "core/error.h"
#include "dist/mpi.h"

#include <fmt/format.h>

#include <algorithm>

namespace kvlab::dist {

DataParallel::DataParallel(bool enabled, int batch_size) {
    if (!enabled || !active()) return;
    ranks_ = size();
    rank_ = rank();
    if (batch_size % ranks_ != 0)
        throw ConfigError("train.batch_size",
                          fmt::format("data-parallel training over {} ranks needs a batch_size divisible by {}, got {} "
                                      "(pick a multiple of {}, or run with -np a divisor of {})",
                                      ranks_, ranks_, batch_size, ranks_, batch_size));
}

void DataParallel::shard(Batch& b) const {
    if (ranks_ == 1) return;
    KV_CHECK(b.B % ranks_ == 0, "batch of {} rows does not split over {} ranks", b.B, ranks_);
    const int rows = b.B / ranks_;
    const auto first = static_cast<std::ptrdiff_t>(rank_) * rows * b.T, count = static_cast<std::ptrdiff_t>(rows) * b.T;
    std::copy(b.inputs.begin() + first, b.inputs.begin() + first + count, b.inputs.begin());
    std::copy(b.targets.begin() + first, b.targets.begin() + first + count, b.targets.begin());
    b.inputs.resize(size_t(count));
    b.targets.resize(size_t(count));
    b.B = rows;
}

double DataParallel::reduce_gradients(float* grad, int64_t n, double loss, const Batch& shard) const {
    if (ranks_ == 1) return loss;
    const int64_t scored = scored_tokens(shard);
    // The shard's loss sum and scored tokens, summed over the ranks.
    double sums[2] = {scored > 0 ? loss * double(scored) : 0.0, double(scored)};
    allreduce_sum(sums, 2);
    const auto total_scored = static_cast<int64_t>(sums[1]);
    weight_shard_gradient(grad, n, scored, total_scored);
    allreduce_sum(grad, n);
    return total_scored > 0 ? sums[0] / double(total_scored) : 0.0;
}

int64_t scored_tokens(const Batch& b) {
    return static_cast<int64_t>(std::count_if(b.targets.begin(), b.targets.end(), [](int32_t t) { return t >= 0; }));
}

void weight_shard_gradient(float* grad, int64_t n, int64_t scored, int64_t total_scored) {
    // A shard without scored tokens contributes nothing (its "mean" is 0/0).
    const float w = scored > 0 && total_scored > 0 ? float(double(scored) / double(total_scored)) : 0.f;
    for (int64_t i = 0; i < n; ++i) grad[i] = w != 0.f ? grad[i] * w : 0.f;
}

void DataParallel::reduce_eval(double& loss_sum, int64_t& scored, int64_t& correct) const {
    if (ranks_ == 1) return;
    int64_t counts[2] = {scored, correct};
    allreduce_sum(&loss_sum, 1);
    allreduce_sum(counts, 2);
    scored = counts[0];
    correct = counts[1];
}

}  // namespace kvlab::dist
