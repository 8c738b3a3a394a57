// The model's elementwise and row ops, each forward next to its hand-written backward.
// Templated on the scalar (float for training, double for gradient checks). Row loops
// are OpenMP-parallel; reductions over rows (gain gradients) are done as column sums
// of per-row products so the result does not depend on the thread count.
#pragma once

#include "core/gemm.h"
#include "core/tensor.h"

namespace kvlab {
// Row loops go parallel only above this many rows: for a decode step (one row) the
// fork/join of a parallel region costs more than the work.
inline constexpr Eigen::Index kParallelRows = 32;
}  // namespace kvlab

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
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
        const S ss = Eigen::Map<const RowVecT<S>>(xr, D).squaredNorm();
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
        const S dot = (Eigen::Map<const Eigen::Array<S, 1, Eigen::Dynamic>>(g, D) *
                       Eigen::Map<const Eigen::Array<S, 1, Eigen::Dynamic>>(dyr, D) *
                       Eigen::Map<const Eigen::Array<S, 1, Eigen::Dynamic>>(xr, D))
                          .sum();
        const S c = rn * rn * rn * dot / S(D);
        for (Eigen::Index d = 0; d < D; ++d) {
            dxr[d] = rn * g[d] * dyr[d] - xr[d] * c;
            wr[d] = dyr[d] * xr[d] * rn;
        }
    }
    Eigen::Map<RowVecT<S>>(dg, D) += work.colwise().sum();
}

// SwiGLU inner product: hmid = silu(a) ⊙ b, silu(z) = z·sigmoid(z).  a, b, hmid: [N, F]
// (rows as Eigen arrays: the exp is Eigen's vectorised one)
template <class S>
void swiglu_forward(CRefT<S> a, CRefT<S> b, RefT<S> hmid) {
    const Eigen::Index N = a.rows();
#pragma omp parallel for schedule(static) if (N > kParallelRows)
    for (Eigen::Index n = 0; n < N; ++n) {
        const auto z = a.row(n).array();
        hmid.row(n).array() = z / (S(1) + (-z).exp()) * b.row(n).array();
    }
}

// hmid = silu(a) ⊙ b:  da = dh ⊙ b ⊙ σ(a)(1 + a(1 − σ(a))),  db = dh ⊙ silu(a).  Writes da, db.
template <class S>
void swiglu_backward(CRefT<S> a, CRefT<S> b, CRefT<S> dh, RefT<S> da, RefT<S> db) {
    const Eigen::Index N = a.rows();
#pragma omp parallel for schedule(static) if (N > kParallelRows)
    for (Eigen::Index n = 0; n < N; ++n) {
        const auto z = a.row(n).array(), g = dh.row(n).array();
        auto sg = db.row(n).array();   // σ(a) first, then db
        sg = S(1) / (S(1) + (-z).exp());
        da.row(n).array() = g * b.row(n).array() * sg * (S(1) + z * (S(1) - sg));
        sg = g * z * sg;
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
        const Eigen::Map<const Eigen::Array<S, 1, Eigen::Dynamic>> l(lr, V);
        Eigen::Map<Eigen::Array<S, 1, Eigen::Dynamic>> p(pr, V);
        const S mx = l.maxCoeff();
        p = (l - mx).exp();
        const S sum = p.sum();
        p *= S(1) / sum;
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

template <class S>
using ColMatT = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

// A weight gradient summed over the rows: dW += Aᵀ B, dW [m, n] row-major (in the arena),
// A [N, m], B [N, n] activations. Eigen runs a product into a row-major matrix as the
// transposed column-major product, which makes A its right-hand side; a row-major
// right-hand side is packed by a scalar copy, the larger the wider A is. For m > n the
// product goes into the column-major scratch instead (B becomes the right-hand side, A is
// packed vectorised) and is then added: 19% faster for [N, 2F]ᵀ [N, D] at the large
// benchmark's sizes. The values are those of the same products (summation order aside).
// With OpenBLAS (gemm.h) the product goes straight into dW: its packing is vectorised
// whichever side is row-major.
template <class S>
void add_weight_grad(CRefT<S> A, CRefT<S> B, MapT<S> dW, ColMatT<S>& scratch) {
    if (gemm::init().backend == gemm::Backend::openblas) {
        gemm::tn(dW, A, B, gemm::add);
        return;
    }
    if (A.cols() <= B.cols()) {
        dW.noalias() += A.transpose() * B;
        return;
    }
    scratch.resize(A.cols(), B.cols());   // no allocation once sized
    scratch.noalias() = A.transpose() * B;
    dW += scratch;
}

// Decoding's matrix-vector products: out [1, R] = x [1, C] · Wᵀ, W [R, C] row-major. They
// are memory-bound (each weight is read once per token), so with more than one OpenMP
// thread and a W of at least kParallelMatvec elements every thread takes its own block of
// W's rows: one fork/join per product, and each thread streams its share of W. Every
// output element is the same dot product whichever block it falls in.
inline constexpr Eigen::Index kParallelMatvec = 16384;

template <class X, class W, class O>
void matvec_t(const X& x, const W& w, O&& out) {
    const Eigen::Index R = w.rows();
    const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (nt == 1 || w.size() < kParallelMatvec) {
        out.noalias() = x * w.transpose();
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const Eigen::Index a = R * t / n, b = R * (t + 1) / n;
        if (b > a) out.middleCols(a, b - a).noalias() = x * w.middleRows(a, b - a).transpose();
    }
}

// Several decoding products of one x, out_j [1, R_j] = x · W_jᵀ, in one parallel region
// instead of one each: the rows of all the W_j, in order, are split evenly between the
// threads (each thread's share may span several W_j). Serial as matvec_t is when there is
// one thread or fewer than kParallelMatvec weights in all. Each output element is the same
// dot product whichever block it falls in.
template <class S>
struct MatvecPart {
    CMapT<S> w;   // [R, C] row-major
    S* out;       // R floats
};

template <class S, class X>
void matvecs_t(const X& x, std::initializer_list<MatvecPart<S>> parts) {
    Eigen::Index rows = 0, size = 0;
    for (const auto& p : parts) rows += p.w.rows(), size += p.w.size();
    const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (nt == 1 || size < kParallelMatvec) {
        for (const auto& p : parts) MapT<S>(p.out, 1, p.w.rows()).noalias() = x * p.w.transpose();
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const Eigen::Index a = rows * t / n, b = rows * (t + 1) / n;   // this thread's rows of all parts
        Eigen::Index first = 0;                                           // the part's first row in that count
        for (const auto& p : parts) {
            const Eigen::Index lo = std::max(a, first) - first, hi = std::min(b, first + p.w.rows()) - first;
            if (hi > lo) MapT<S>(p.out + lo, 1, hi - lo).noalias() = x * p.w.middleRows(lo, hi - lo).transpose();
            first += p.w.rows();
        }
    }
}

// Decoding's SwiGLU MLP for one token, out [1, D] = (silu(a) ⊙ b) w_downᵀ with [a | b] =
// x w_gateᵀ (w_gate [2F, D]: a's rows, then b's; w_down [D, F]), in one parallel region:
// each thread takes a block of the F hidden units (their rows of a and of b, and their
// SwiGLU), then after one barrier a block of w_down's rows. ab [1, 2F] and hmid [1, F] are
// scratch. Serial (three steps) as matvec_t is.
template <class S>
void mlp_decode(CRefT<S> x, CMapT<S> w_gate, CMapT<S> w_down, RefT<S> ab, RefT<S> hmid, RefT<S> out) {
    const Eigen::Index F = w_down.cols(), D = w_down.rows();
    const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (nt == 1 || w_down.size() < kParallelMatvec) {
        ab.noalias() = x * w_gate.transpose();
        swiglu_forward<S>(ab.leftCols(F), ab.rightCols(F), hmid);
        out.noalias() = hmid * w_down.transpose();
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const Eigen::Index a = F * t / n, b = F * (t + 1) / n;
        if (b > a) {
            ab.middleCols(a, b - a).noalias() = x * w_gate.middleRows(a, b - a).transpose();
            ab.middleCols(F + a, b - a).noalias() = x * w_gate.middleRows(F + a, b - a).transpose();
            swiglu_forward<S>(ab.middleCols(a, b - a), ab.middleCols(F + a, b - a), hmid.middleCols(a, b - a));
        }
#pragma omp barrier
        const Eigen::Index c = D * t / n, d = D * (t + 1) / n;
        if (d > c) out.middleCols(c, d - c).noalias() = hmid * w_down.middleRows(c, d - c).transpose();
    }
}

}  // namespace kvlab::ops
