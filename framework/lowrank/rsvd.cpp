// Randomized SVD: Halko, Martinsson & Tropp 2011, "Finding structure with randomness"
// (SIAM Review 53(2), arXiv 0909.4061), Algorithm 4.4 (randomized subspace iteration,
// re-orthonormalised every pass) followed by Algorithm 5.1 (direct SVD of the small
// projected matrix). Defaults as scikit-learn's randomized_svd.
//   l = min(k + p, min(m, n))            p = oversample (default 10)
//   Ω ~ N(0, 1) [n, l] (drawn row by row from the given Rng: the only randomness)
//   Q = orth(A Ω)                         [m, l]
//   repeat q times:  Z = orth(Aᵀ Q) [n, l],  Q = orth(A Z) [m, l]
//   B = Qᵀ A [l, n] = Ũ Σ Vᵀ (thin SVD),  U = Q Ũ
//   left = U_k Σ_k [m, k],  right = V_kᵀ [k, n],  sigma = σ_1..σ_k
// orth() is a Householder QR (thin Q), which stays orthonormal even when the sketch is
// rank-deficient (A of rank < l), where Gram-Schmidt would not.
// q = power_iters, default 7 if k < 0.1·min(m, n) else 4 (scikit-learn's n_iter="auto").
// Why power iterations (HMT §4.5, Cor. 10.10): they sketch (A Aᵀ)^q A, whose singular
// values are σ_i^{2q+1}, so the tail beyond k is suppressed and the range finder's error
// tends to σ_{k+1} as q grows; on a decaying spectrum a few passes reach the optimum.
// Cost: (4q + 4)·mnl flops for the products with A and Aᵀ, (2q + 1) Householder QRs of
// about 4(m or n)·l² each, and O(n·l²) for the SVD of B: O(q·mnl) against the full SVD's
// O(mn·min(m, n)).
#include "lowrank/lowrank.h"

#include <Eigen/QR>
#include <Eigen/SVD>

#include <algorithm>

namespace kvlab {
namespace {

template <class S>
using ColMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

// Orthonormal basis of the columns of Y (thin Householder Q), [rows, cols].
template <class S>
ColMat<S> orth(const ColMat<S>& Y) {
    Eigen::HouseholderQR<ColMat<S>> qr(Y);
    return qr.householderQ() * ColMat<S>::Identity(Y.rows(), Y.cols());
}

template <class S>
LowRankT<S> rsvd_lowrank(CRefT<S> A, int k, Rng& rng, int oversample, int power_iters) {
    const Eigen::Index m = A.rows(), n = A.cols(), mn = std::min(m, n);
    const Eigen::Index l = std::min<Eigen::Index>(k + oversample, mn);
    const int q = power_iters >= 0 ? power_iters : (k < 0.1 * double(mn) ? 7 : 4);
    const ColMat<S> Ac = A;
    ColMat<S> Omega(n, l);                                   // [n, l]
    for (Eigen::Index i = 0; i < n; ++i)
        for (Eigen::Index j = 0; j < l; ++j) Omega(i, j) = static_cast<S>(rng.normal());
    // Q = orth(A Ω); power iterations with re-orthonormalisation every pass
    ColMat<S> Q = orth<S>(Ac * Omega);                       // [m, l]
    for (int it = 0; it < q; ++it) {
        const ColMat<S> Z = orth<S>(Ac.transpose() * Q);     // [n, l]
        Q = orth<S>(Ac * Z);                                 // [m, l]
    }
    // B = Qᵀ A = Ũ Σ Vᵀ
    const ColMat<S> Bm = Q.transpose() * Ac;                 // [l, n]
    Eigen::BDCSVD<ColMat<S>> svd(Bm, Eigen::ComputeThinU | Eigen::ComputeThinV);
    LowRankT<S> r;
    r.sigma = svd.singularValues().head(k);
    r.left = (Q * svd.matrixU().leftCols(k)) * r.sigma.asDiagonal();   // [m, k]  U_k Σ_k
    r.right = svd.matrixV().leftCols(k).transpose();                   // [k, n]  V_kᵀ
    return r;
}

class Rsvd final : public LowRankApproximator {
public:
    Rsvd(int oversample, int power_iters) : oversample_(oversample), power_iters_(power_iters) {}
    std::string_view name() const override { return "rsvd"; }

protected:
    LowRankT<float> run(CRefT<float> A, int k, Rng& rng) const override {
        return rsvd_lowrank<float>(A, k, rng, oversample_, power_iters_);
    }
    LowRankT<double> run(CRefT<double> A, int k, Rng& rng) const override {
        return rsvd_lowrank<double>(A, k, rng, oversample_, power_iters_);
    }

private:
    int oversample_, power_iters_;   // power_iters_ < 0: scikit-learn's "auto"
};

}  // namespace

std::unique_ptr<LowRankApproximator> make_rsvd(const LowRankOptions& o) {
    const auto p = lowrank::int_option(o, "rsvd", "oversample", 10, 0, 1 << 20);
    const auto q = lowrank::int_option(o, "rsvd", "power_iters", -1, 0, 1000);
    return std::make_unique<Rsvd>(static_cast<int>(p), static_cast<int>(q));
}

}  // namespace kvlab
