// AdamW (Loshchilov & Hutter, arXiv 1711.05101) exactly as torch.optim.AdamW, the
// learning-rate schedule and global-norm gradient clipping.
#pragma once

#include "core/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace kvlab {

// Linear warmup from lr/warmup to lr over warmup_steps, then cosine decay to min_lr at
// the last step. step is 0-based: the lr used by update number step + 1.
inline double lr_at(int step, int steps, double lr, double min_lr, int warmup) {
    if (step < warmup) return lr * double(step + 1) / double(warmup);
    const int decay = steps - warmup;
    if (decay <= 1) return lr;
    const double progress = double(step - warmup) / double(decay - 1);
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

// Scales g so that its global L2 norm is at most max_norm (torch.nn.utils.clip_grad_norm_:
// factor max_norm / (norm + 1e-6) when norm > max_norm). Returns the norm before clipping,
// summed in double in index order (independent of the thread count).
template <class S>
double clip_grad_norm(S* g, int64_t n, double max_norm) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += double(g[i]) * double(g[i]);
    const double norm = std::sqrt(ss);
    if (max_norm > 0 && norm > max_norm) {
        const S f = static_cast<S>(max_norm / (norm + 1e-6));
        for (int64_t i = 0; i < n; ++i) g[i] *= f;
    }
    return norm;
}

class AdamW {
public:
    struct Group { int64_t offset, size; bool decay; };

    AdamW(int64_t n, std::vector<Group> groups, double beta1, double beta2, double eps, double weight_decay)
        : m_(n, 0.f), v_(n, 0.f), groups_(std::move(groups)), b1_(beta1), b2_(beta2), eps_(eps), wd_(weight_decay) {}

    // θ ← θ − lr·wd·θ (matrices only);  m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;
    // θ ← θ − lr · m̂ / (sqrt(v̂) + eps), with bias corrections 1 − β^t.
    void step(float* theta, const float* g, double lr) {
        ++t_;
        const double bc1 = 1.0 - std::pow(b1_, t_), bc2 = 1.0 - std::pow(b2_, t_);
        const float b1 = float(b1_), b2 = float(b2_);
        const float step_size = float(lr / bc1), inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2)), eps = float(eps_);
        // Chunks of Eigen arrays: vectorised (std::sqrt in a plain loop is not, with errno
        // semantics), the same per-element arithmetic in the same order.
        constexpr int64_t kChunk = 4096;
        using Arr = Eigen::Map<Eigen::ArrayXf>;
        using CArr = Eigen::Map<const Eigen::ArrayXf>;
        for (const auto& gr : groups_) {
            const float decay = gr.decay ? float(1.0 - lr * wd_) : 1.f;
            const int64_t lo = gr.offset, hi = gr.offset + gr.size;
#pragma omp parallel for schedule(static) if (hi - lo > kChunk)
            for (int64_t c = lo; c < hi; c += kChunk) {
                const Eigen::Index n = static_cast<Eigen::Index>(std::min(kChunk, hi - c));
                Arr th(theta + c, n), m(m_.data() + c, n), v(v_.data() + c, n);
                const CArr gc(g + c, n);
                th *= decay;
                m = b1 * m + (1.f - b1) * gc;
                v = b2 * v + (1.f - b2) * gc * gc;
                th -= step_size * m / (v.sqrt() * inv_sqrt_bc2 + eps);
            }
        }
    }
    int64_t steps_taken() const { return t_; }
    void set_steps_taken(int64_t t) { t_ = t; }   // resuming from a checkpoint
    std::vector<float>& m() { return m_; }
    std::vector<float>& v() { return v_; }

private:
    std::vector<float> m_, v_;
    std::vector<Group> groups_;
    double b1_, b2_, eps_, wd_;
    int64_t t_ = 0;
};

}  // namespace kvlab
