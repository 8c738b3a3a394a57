// Causal scaled dot-product attention for one (sequence, head), shared by plugins.
//   S = q kᵀ · scale + causal mask,  P = softmax_rows(S),  o = P v
// Softmax runs in the kernel's scalar type with the row max subtracted (Eigen's
// vectorised exp); masked entries of P are exactly 0. Backward (writes dq, accumulates dk
// and dv, which several query heads may share):
//   dv += Pᵀ do,  dP = do vᵀ,  dS = P ⊙ (dP − rowsum(P ⊙ dP)),  dq = dS k · scale,
//   dk += dSᵀ q · scale
//
// Only the causal lower triangle is computed, in blocks of kSdpaBlock query rows: the
// rows r0..r1-1 of a block see keys 0..r1-1 only, so the products cost about
// (T + kSdpaBlock) / 2T of the full T×T ones (62% at T = 256), and the backward's dP is
// one block of rows at a time, a scratch that stays in cache.
#pragma once

#include "core/gemm.h"
#include "core/tensor.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace kvlab {

inline constexpr Eigen::Index kSdpaBlock = 64;

// s[0..n) ← softmax(s · scale), in place, with the max subtracted (scale > 0).
template <class S>
inline void softmax_scaled_row(S* s, Eigen::Index n, S scale) {
    Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>> a(s, n);
    const S mx = a.maxCoeff() * scale;   // = max(s · scale): rounding is monotonic
    a = (a * scale - mx).exp();
    a *= S(1) / a.sum();
}

// q, k: [T, dq]; v: [T, dv]; P: [T, T] (kept for backward; all of it is written); o: [T, dv].
template <class S>
void sdpa_forward(CRefT<S> q, CRefT<S> k, CRefT<S> v, S scale, RefT<S> P, RefT<S> o) {
    const Eigen::Index T = q.rows();
    for (Eigen::Index r0 = 0; r0 < T; r0 += kSdpaBlock) {
        const Eigen::Index r1 = std::min(T, r0 + kSdpaBlock), m = r1 - r0;
        // S = q kᵀ for the block's rows against keys 0..r1-1
        gemm::nt(P.block(r0, 0, m, r1), q.middleRows(r0, m), k.topRows(r1));
        for (Eigen::Index t = r0; t < r1; ++t) {
            S* row = &P(t, 0);
            softmax_scaled_row(row, t + 1, scale);
            std::fill(row + t + 1, row + T, S(0));
        }
        // o = P v (the block's P is 0 right of the diagonal)
        gemm::nn(o.middleRows(r0, m), P.block(r0, 0, m, r1), v.topRows(r1));
    }
}

// dP: scratch of at least min(T, kSdpaBlock) rows and T columns. dq is written; dk, dv
// are accumulated.
template <class S>
void sdpa_backward(CRefT<S> q, CRefT<S> k, CRefT<S> v, CRefT<S> P, CRefT<S> dout, S scale, RefT<S> dP,
                   RefT<S> dq, RefT<S> dk, RefT<S> dv) {
    const Eigen::Index T = q.rows();
    for (Eigen::Index r0 = 0; r0 < T; r0 += kSdpaBlock) {
        const Eigen::Index r1 = std::min(T, r0 + kSdpaBlock), m = r1 - r0;
        const auto Pb = P.block(r0, 0, m, r1);
        auto dPb = dP.block(0, 0, m, r1);
        // o = P v
        gemm::tn(dv.topRows(r1), Pb, dout.middleRows(r0, m), gemm::add);
        gemm::nt(dPb, dout.middleRows(r0, m), v.topRows(r1));
        // P = softmax(S): dS = P ⊙ (dP − rowsum(P ⊙ dP)); fold in the scale of S = q kᵀ · scale
        for (Eigen::Index t = r0; t < r1; ++t) {
            const Eigen::Index n = t + 1;
            const Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>> p(P.data() + t * P.outerStride(), n);
            S* drow = &dPb(t - r0, 0);
            Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>> d(drow, n);
            const S dot = (p * d).sum();
            d = p * (d - dot) * scale;
            std::fill(drow + n, drow + r1, S(0));
        }
        // S = q kᵀ
        gemm::nn(dq.middleRows(r0, m), dPb, k.topRows(r1));
        gemm::tn(dk.topRows(r1), dPb, q.middleRows(r0, m), gemm::add);
    }
}

// One query row against n cached keys (decoding). q: [1, dq]; K: [n, dq]; V: [n, dv];
// p: [1, n] scratch; o: [1, dv].
template <class S>
void sdpa_decode(CRefT<S> q, CRefT<S> K, CRefT<S> V, S scale, RefT<S> p, RefT<S> o) {
    const Eigen::Index n = K.rows();
    p.noalias() = q * K.transpose();
    softmax_scaled_row(p.data(), n, scale);
    o.noalias() = p * V;
}

}  // namespace kvlab
