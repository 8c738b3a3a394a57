// Causal scaled dot-product attention for one (sequence, head), shared by plugins.
//   S = q kᵀ · scale + causal mask,  P = softmax_rows(S),  o = P v
// Softmax runs in the kernel's scalar type with the row max subtracted; masked entries
// of P are exactly 0. Backward (writes dq, accumulates dk and dv, which several query
// heads may share):
//   dv += Pᵀ do,  dP = do vᵀ,  dS = P ⊙ (dP − rowsum(P ⊙ dP)),  dq = dS k · scale,
//   dk += dSᵀ q · scale
#pragma once

#include "core/tensor.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace kvlab {

// q, k: [T, dq]; v: [T, dv]; P: [T, T] (kept for backward); o: [T, dv].
template <class S>
void sdpa_forward(CRefT<S> q, CRefT<S> k, CRefT<S> v, S scale, RefT<S> P, RefT<S> o) {
    const Eigen::Index T = q.rows();
    P.noalias() = q * k.transpose();
    for (Eigen::Index t = 0; t < T; ++t) {
        S* row = &P(t, 0);
        S mx = -std::numeric_limits<S>::infinity();
        for (Eigen::Index j = 0; j <= t; ++j) mx = std::max(mx, row[j] * scale);
        S sum = 0;
        for (Eigen::Index j = 0; j <= t; ++j) {
            const S e = std::exp(row[j] * scale - mx);
            row[j] = e;
            sum += e;
        }
        const S inv = S(1) / sum;
        for (Eigen::Index j = 0; j <= t; ++j) row[j] *= inv;
        for (Eigen::Index j = t + 1; j < T; ++j) row[j] = 0;
    }
    o.noalias() = P * v;
}

// dP: [T, T] scratch. dq is written; dk, dv are accumulated.
template <class S>
void sdpa_backward(CRefT<S> q, CRefT<S> k, CRefT<S> v, CRefT<S> P, CRefT<S> dout, S scale, RefT<S> dP,
                   RefT<S> dq, RefT<S> dk, RefT<S> dv) {
    const Eigen::Index T = q.rows();
    // o = P v
    dv.noalias() += P.transpose() * dout;
    dP.noalias() = dout * v.transpose();
    // P = softmax(S): dS = P ⊙ (dP − rowsum(P ⊙ dP)); fold in the scale of S = q kᵀ · scale
    for (Eigen::Index t = 0; t < T; ++t) {
        const S* p = P.data() + t * P.outerStride();
        S* d = &dP(t, 0);
        S dot = 0;
        for (Eigen::Index j = 0; j <= t; ++j) dot += p[j] * d[j];
        for (Eigen::Index j = 0; j <= t; ++j) d[j] = p[j] * (d[j] - dot) * scale;
        for (Eigen::Index j = t + 1; j < T; ++j) d[j] = 0;
    }
    // S = q kᵀ
    dq.noalias() = dP * k;
    dk.noalias() += dP.transpose() * q;
}

// One query row against n cached keys (decoding). q: [1, dq]; K: [n, dq]; V: [n, dv];
// p: [1, n] scratch; o: [1, dv].
template <class S>
void sdpa_decode(CRefT<S> q, CRefT<S> K, CRefT<S> V, S scale, RefT<S> p, RefT<S> o) {
    const Eigen::Index n = K.rows();
    p.noalias() = q * K.transpose();
    S mx = -std::numeric_limits<S>::infinity();
    for (Eigen::Index j = 0; j < n; ++j) mx = std::max(mx, p(0, j) * scale);
    S sum = 0;
    for (Eigen::Index j = 0; j < n; ++j) {
        const S e = std::exp(p(0, j) * scale - mx);
        p(0, j) = e;
        sum += e;
    }
    p /= sum;
    o.noalias() = p * V;
}

}  // namespace kvlab
