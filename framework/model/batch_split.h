// Data parallelism over threads for one training step: the batch's sequences are split
// into contiguous shards, one per thread; each shard runs forward and backward on its own
// model replica (the same parameters, its own activations and gradient arena) with every
// product and loop on that one thread, and the replicas' gradients are added into the
// model's arena. The gradient is that of the whole batch's mean loss, as one forward and
// backward would give it, up to the order of the sums.
//
// Why: at the small benchmark configuration (d_model 128, 4096 tokens a step) each
// product is too small for two threads to share well (a 2-thread step was 1.5× a 1-thread
// one); two shards on one thread each keep both cores in long single-threaded kernels.
// Results are deterministic for a given shard count; runs with different thread counts
// differ in the last bits, as they did when the products split between threads.
#pragma once

#include "model/transformer.h"

#include <memory>
#include <vector>

namespace kvlab {

// KVLAB_BATCH_SPLIT=auto (the default: one shard per OpenMP thread, at most one per
// sequence) or off (one shard: the products share the threads instead). Anything else
// is an error naming the variable.
int batch_shards_from_env(int threads, int batch);

template <class S>
class BatchSplit {
public:
    // shards ≤ 1: forward and backward run on the model itself.
    BatchSplit(Transformer<S>& model, int shards);
    ~BatchSplit();
    BatchSplit(const BatchSplit&) = delete;
    BatchSplit& operator=(const BatchSplit&) = delete;

    int shards() const { return shards_; }

    // The mean cross-entropy of the whole batch (as Transformer::forward).
    double forward(const int32_t* inputs, const int32_t* targets, int B, int T);
    // Among targets != -1 of the last forward: how many, and how many argmax-correct.
    void count_correct(const int32_t* targets, int64_t& scored, int64_t& correct) const;
    // Accumulates d loss / d θ of the last forward into the model's gradient arena (as
    // Transformer::backward); the replicas' arenas are scratch.
    void backward();

    // Bytes beyond the model's own: the replicas' gradient arenas and activation buffers.
    int64_t replica_bytes() const;
    // Sum of every shard's activation bytes (the model's included).
    int64_t activation_bytes() const;

private:
    Transformer<S>& model_;
    int shards_;
    std::vector<std::unique_ptr<Transformer<S>>> replicas_;   // shards 1..n-1; shard 0 is the model
    std::vector<int> row0_;                                      // shard s: sequences [row0_[s], row0_[s+1])
    std::vector<double> loss_;                                   // per shard: mean loss of its forward
    int T_ = 0;

    Transformer<S>& shard(int s) { return s == 0 ? model_ : *replicas_[size_t(s) - 1]; }
    const Transformer<S>& shard(int s) const { return s == 0 ? model_ : *replicas_[size_t(s) - 1]; }
    template <class F>
    void run_shards(F&& f);
};

extern template class BatchSplit<float>;
extern template class BatchSplit<double>;

}  // namespace kvlab
