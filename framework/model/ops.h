// The model's elementwise and row ops, each forward next to its hand-written backward.
// Templated on the scalar (float for training, double for gradient checks). Row loops
// are OpenMP-parallel; reductions over rows (gain gradients) are done as column sums
// of per-row products so the result does not depend on the thread count.
#pragma once

#include "core/tensor.h"

namespace kvlab {
// Row loops go parallel only above this many rows: for a decode step (one row) the
// fork/join of a parallel region costs more than the work.
inline constexpr Eigen::Index kParallelRows = 32;
}  // namespace kvlab

#include <cmath>
#include <cstdint>
#include <limits>

namespace kvlab::ops {

// RMSNorm(x; g) = x / sqrt(mean(x²) + eps) ⊙ g.   x, y: [N, D]; r: [N] inverse rms (kept).
template <class S>
void rmsnorm_forward(CRefT<S> x, const S* g, double eps, RefT<S> y, S* r) {
    const Eigen::Index N = x.rows(), D = x.cols();
#pragma omp parallel for schedule(static) if (N > kParallelRows)
    for (Eigen::Index n = 0; n < N; ++n) {
        const S* xr = x.data() + n * x.outerStride();
        S* yr = &y(n, 0);
        S ss = 0;
        for (Eigen::Index d = 0; d < D; ++d) ss += xr[d] * xr[d];
        const S inv = S(1) / std::sqrt(ss / S(D) + S(eps));
        r[n] = inv;
        for (Eigen::Index d = 0; d < D; ++d) yr[d] = xr[d] * inv * g[d];
    }
}

// y_j = g_j x_j r, r = (mean(x²) + eps)^(-1/2):
//   dx_j = r (g_j dy_j) − x_j r³ / D · Σ_i g_i dy_i x_i,   dg_j += Σ_rows dy_j x_j r
// dx is written; dg accumulated. work: [N, D] scratch.
template <class S>
void rmsnorm_backward(CRefT<S> x, const S* g, const S* r, CRefT<S> dy, RefT<S> dx, S* dg, RefT<S> work) {
    const Eigen::Index N = x.rows(), D = x.cols();
#pragma omp parallel for schedule(static) if (N > kParallelRows)
    for (Eigen::Index n = 0; n < N; ++n) {
        const S* xr = x.data() + n * x.outerStride();
        const S* dyr = dy.data() + n * dy.outerStride();
        S* dxr = &dx(n, 0);
        S* wr = &work(n, 0);
        const S rn = r[n];
        S dot = 0;
        for (Eigen::Index d = 0; d < D; ++d) dot += g[d] * dyr[d] * xr[d];
        const S c = rn * rn * rn * dot / S(D);
        for (Eigen::Index d = 0; d < D; ++d) {
            dxr[d] = rn * g[d] * dyr[d] - xr[d] * c;
            wr[d] = dyr[d] * xr[d] * rn;
        }
    }
    Eigen::Map<RowVecT<S>>(dg, D) += work.colwise().sum();
}

template <class S>
inline S sigmoid(S z) {
    return S(1) / (S(1) + std::exp(-z));
}

// SwiGLU inner product: hmid = silu(a) ⊙ b, silu(z) = z·sigmoid(z).  a, b, hmid: [N, F]
template <class S>
void swiglu_forward(CRefT<S> a, CRefT<S> b, RefT<S> hmid) {
    const Eigen::Index N = a.rows(), F = a.cols();
#pragma omp parallel for schedule(static) if (N > kParallelRows)
    for (Eigen::Index n = 0; n < N; ++n)
        for (Eigen::Index f = 0; f < F; ++f) {
            const S z = a(n, f);
            hmid(n, f) = z * sigmoid(z) * b(n, f);
        }
}

// hmid = silu(a) ⊙ b:  da = dh ⊙ b ⊙ σ(a)(1 + a(1 − σ(a))),  db = dh ⊙ silu(a).  Writes da, db.
template <class S>
void swiglu_backward(CRefT<S> a, CRefT<S> b, CRefT<S> dh, RefT<S> da, RefT<S> db) {
    const Eigen::Index N = a.rows(), F = a.cols();
#pragma omp parallel for schedule(static) if (N > kParallelRows)
    for (Eigen::Index n = 0; n < N; ++n)
        for (Eigen::Index f = 0; f < F; ++f) {
            const S z = a(n, f), sg = sigmoid(z);
            da(n, f) = dh(n, f) * b(n, f) * sg * (S(1) + z * (S(1) - sg));
            db(n, f) = dh(n, f) * z * sg;
        }
}

// Cross-entropy over rows whose target != -1. Writes probs = softmax(logits) (rows with
// an ignored target too, for sampling/accuracy) and row_loss[n] = −log p[target] (0 for
// ignored rows). Returns the summed loss, added in row order in double so it does not
// depend on the thread count, and the number of scored rows.
template <class S>
double cross_entropy_forward(CRefT<S> logits, const int32_t* targets, RefT<S> probs, double* row_loss,
                             int64_t& n_scored) {
    const Eigen::Index N = logits.rows(), V = logits.cols();
#pragma omp parallel for schedule(static) if (N > kParallelRows)
    for (Eigen::Index n = 0; n < N; ++n) {
        const S* lr = logits.data() + n * logits.outerStride();
        S* pr = &probs(n, 0);
        S mx = -std::numeric_limits<S>::infinity();
        for (Eigen::Index v = 0; v < V; ++v) mx = std::max(mx, lr[v]);
        S sum = 0;
        for (Eigen::Index v = 0; v < V; ++v) {
            pr[v] = std::exp(lr[v] - mx);
            sum += pr[v];
        }
        const S inv = S(1) / sum;
        for (Eigen::Index v = 0; v < V; ++v) pr[v] *= inv;
        // −log softmax(l)[t] = log Σ exp(l − max) − (l_t − max)
        const int32_t t = targets ? targets[n] : -1;
        row_loss[n] = t >= 0 ? double(std::log(sum)) - double(lr[t] - mx) : 0.0;
    }
    double total = 0;
    int64_t count = 0;
    for (Eigen::Index n = 0; n < N; ++n)
        if (targets && targets[n] >= 0) {
            total += row_loss[n];
            ++count;
        }
    n_scored = count;
    return total;
}

// loss = (1/n) Σ −log p[t]:  dlogits = (p − onehot(t)) / n on scored rows, 0 elsewhere.
template <class S>
void cross_entropy_backward(CRefT<S> probs, const int32_t* targets, int64_t n_scored, RefT<S> dlogits) {
    const Eigen::Index N = probs.rows();
    const S inv = n_scored > 0 ? S(1) / S(n_scored) : S(0);
#pragma omp parallel for schedule(static) if (N > kParallelRows)
    for (Eigen::Index n = 0; n < N; ++n) {
        if (targets[n] < 0) {
            dlogits.row(n).setZero();
            continue;
        }
        dlogits.row(n) = probs.row(n) * inv;
        dlogits(n, targets[n]) -= inv;
    }
}

}  // namespace kvlab::ops
