// Half-split rotary position embedding (GPT-NeoX / Hugging Face LLaMA layout), model.md:
//   u1 = u[0:d/2], u2 = u[d/2:d], θ_j = p · rope_theta^(-2j/d), j in 0..d/2-1
//   RoPE(u) = [u1 ⊙ cos θ − u2 ⊙ sin θ,  u2 ⊙ cos θ + u1 ⊙ sin θ]
// Angles are computed in double and rounded once to S, in the tables and in the
// per-position path used by decoding alike, so both give bit-identical rotations.
#pragma once

#include "core/error.h"
#include "core/tensor.h"

#include <cmath>
#include <vector>

namespace kvlab {

template <class S>
class Rope {
public:
    Rope() = default;
    Rope(int dim, double theta) : dim_(dim), theta_(theta) {
        KV_CHECK(dim % 2 == 0, "RoPE width must be even, got {}", dim);
    }
    int dim() const { return dim_; }

    // Tables for positions 0..T-1 (grown, never shrunk; no allocation once large enough).
    void ensure(int T) {
        if (T <= T_) return;
        const int h = dim_ / 2;
        cos_.resize(static_cast<size_t>(T) * h);
        sin_.resize(static_cast<size_t>(T) * h);
        for (int p = 0; p < T; ++p)
            for (int j = 0; j < h; ++j) {
                const double a = angle(p, j);
                cos_[static_cast<size_t>(p) * h + j] = static_cast<S>(std::cos(a));
                sin_[static_cast<size_t>(p) * h + j] = static_cast<S>(std::sin(a));
            }
        T_ = T;
    }

    // Rotates, in place, n consecutive heads of width dim() starting at `row`, for
    // position pos. inverse = true applies the transposed rotation (the backward pass).
    void apply(S* row, int n, int pos, bool inverse = false) const {
        const int h = dim_ / 2;
        if (pos < T_) {
            const S* c = &cos_[static_cast<size_t>(pos) * h];
            const S* s = &sin_[static_cast<size_t>(pos) * h];
            rotate(row, n, c, s, inverse);
        } else {
            S c[512], s[512];
            KV_CHECK(h <= 512, "RoPE width {} too large", dim_);
            for (int j = 0; j < h; ++j) {
                const double a = angle(pos, j);
                c[j] = static_cast<S>(std::cos(a));
                s[j] = static_cast<S>(std::sin(a));
            }
            rotate(row, n, c, s, inverse);
        }
    }

    // Applies to columns [col, col + n*dim) of every row of X [B*T, ·]; row r is at
    // position r % T. Call ensure(T) first.
    void apply_rows(RefT<S> X, int T, int col, int n, bool inverse = false) const {
        const Eigen::Index rows = X.rows();
#pragma omp parallel for schedule(static) if (rows > 32)
        for (Eigen::Index r = 0; r < rows; ++r) apply(&X(r, col), n, static_cast<int>(r % T), inverse);
    }

private:
    double angle(int p, int j) const { return p * std::pow(theta_, -2.0 * j / dim_); }

    void rotate(S* row, int n, const S* c, const S* s, bool inverse) const {
        const int h = dim_ / 2;
        const S sign = inverse ? S(-1) : S(1);
        for (int i = 0; i < n; ++i) {
            S* u1 = row + i * dim_;
            S* u2 = u1 + h;
            for (int j = 0; j < h; ++j) {
                const S a = u1[j], b = u2[j], sj = sign * s[j];
                u1[j] = a * c[j] - b * sj;
                u2[j] = b * c[j] + a * sj;
            }
        }
    }

    int dim_ = 0;
    double theta_ = 10000.0;
    int T_ = 0;
    std::vector<S> cos_, sin_;
};

}  // namespace kvlab
