#include "model/batch_split.h"

#include "core/error.h"

#include <fmt/format.h>
#include <omp.h>

#include <cstdlib>
#include <exception>
#include <string>

namespace kvlab {

int batch_shards_from_env(int threads, int batch) {
    const char* v = std::getenv("KVLAB_BATCH_SPLIT");
    const std::string mode = v ? v : "auto";
    if (mode == "off") return 1;
    if (mode != "auto" && !mode.empty())
        throw Error(fmt::format("KVLAB_BATCH_SPLIT=\"{}\": allowed are auto (the default: one batch shard per "
                                "thread) and off (the products share the threads)",
                                mode));
    return std::max(1, std::min(threads, batch));
}

template <class S>
BatchSplit<S>::BatchSplit(Transformer<S>& model, int shards) : model_(model), shards_(std::max(1, shards)) {
    for (int s = 1; s < shards_; ++s)
        replicas_.push_back(std::make_unique<Transformer<S>>(typename Transformer<S>::ReplicaOf{model}));
}

template <class S>
BatchSplit<S>::~BatchSplit() = default;

template <class S>
template <class F>
void BatchSplit<S>::run_shards(F&& f) {
    const int n = static_cast<int>(row0_.size()) - 1;
    std::vector<std::exception_ptr> error(static_cast<size_t>(n));
#pragma omp parallel num_threads(n)
    {
        omp_set_num_threads(1);   // this region's nested loops and products stay on this thread
        const int nt = omp_get_num_threads();
        for (int s = omp_get_thread_num(); s < n; s += nt) {
            try {
                f(s);
            } catch (...) {
                error[static_cast<size_t>(s)] = std::current_exception();
            }
        }
    }
    for (auto& e : error)
        if (e) std::rethrow_exception(e);
}

template <class S>
double BatchSplit<S>::forward(const int32_t* inputs, const int32_t* targets, int B, int T) {
    const int n = std::min(shards_, B);
    T_ = T;
    if (n <= 1) {
        row0_ = {0, B};
        return model_.forward(inputs, targets, B, T);
    }
    // Sequences split as evenly as they go: shard s gets B/n or B/n + 1, in order.
    row0_.assign(static_cast<size_t>(n) + 1, 0);
    for (int s = 0; s < n; ++s) row0_[size_t(s) + 1] = row0_[size_t(s)] + B / n + (s < B % n ? 1 : 0);
    loss_.assign(static_cast<size_t>(n), 0.0);
    run_shards([&](int s) {
        const int b0 = row0_[size_t(s)], b = row0_[size_t(s) + 1] - b0;
        const int64_t off = int64_t(b0) * T;
        loss_[size_t(s)] = shard(s).forward(inputs + off, targets ? targets + off : nullptr, b, T);
    });
    double sum = 0;
    int64_t scored = 0;
    for (int s = 0; s < n; ++s) {
        sum += loss_[size_t(s)] * double(shard(s).n_scored());
        scored += shard(s).n_scored();
    }
    return scored > 0 ? sum / double(scored) : 0.0;
}

template <class S>
void BatchSplit<S>::count_correct(const int32_t* targets, int64_t& scored, int64_t& correct) const {
    scored = correct = 0;
    for (int s = 0; s + 1 < static_cast<int>(row0_.size()); ++s) {
        int64_t a = 0, b = 0;
        shard(s).count_correct(targets + int64_t(row0_[size_t(s)]) * T_, a, b);
        scored += a;
        correct += b;
    }
}

template <class S>
void BatchSplit<S>::backward() {
    const int n = static_cast<int>(row0_.size()) - 1;
    KV_CHECK(n >= 1, "backward needs a forward");
    if (n == 1) return model_.backward();
    int64_t scored = 0;
    for (int s = 0; s < n; ++s) scored += shard(s).n_scored();
    // Each shard differentiates its summed loss over the batch's scored targets: the parts
    // of the batch's mean. Shard 0 adds into the model's arena; the replicas start from zero.
    run_shards([&](int s) {
        if (s > 0) shard(s).zero_grad();
        shard(s).backward(std::max<int64_t>(scored, 1));
    });
    S* g = model_.grad_data();
    const int64_t np = model_.n_params();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < np; ++i) {
        S acc = g[i];
        for (int s = 1; s < n; ++s) acc += replicas_[size_t(s) - 1]->grad_data()[i];
        g[i] = acc;
    }
}

template <class S>
int64_t BatchSplit<S>::replica_bytes() const {
    int64_t bytes = 0;
    for (const auto& r : replicas_) bytes += r->n_params() * int64_t(sizeof(S)) + r->activation_bytes();
    return bytes;
}

template <class S>
int64_t BatchSplit<S>::activation_bytes() const {
    int64_t bytes = model_.activation_bytes();
    for (const auto& r : replicas_) bytes += r->activation_bytes();
    return bytes;
}

template class BatchSplit<float>;
template class BatchSplit<double>;

}  // namespace kvlab
