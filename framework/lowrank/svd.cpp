// Truncated SVD: the Eckart–Young–Mirsky optimum of rank k in every unitarily invariant
// norm (Eckart & Young 1936; Mirsky 1960).
//   A = U Σ Vᵀ  (thin),  A_k = U_k Σ_k V_kᵀ,  ‖A − A_k‖_F = sqrt(Σ_{i>k} σ_i²)
//   left = U_k Σ_k [m, k],  right = V_kᵀ [k, n],  sigma = σ_1..σ_k
// Computed with Eigen's BDCSVD (Householder bidiagonalisation, then divide and conquer,
// as LAPACK's gesdd) on a column-major copy of A.
// Cost: the full thin SVD whatever k is: about 4mn² − 4n³/3 flops for the
// bidiagonalisation (m ≥ n; swap m, n otherwise) plus O(n³) for the bidiagonal SVD and
// the accumulation of U and V, i.e. O(mn·min(m, n)). Deterministic: ignores rng.
#include "lowrank/lowrank.h"

#include <Eigen/SVD>

namespace kvlab {
namespace {

template <class S>
LowRankT<S> svd_lowrank(CRefT<S> A, int k) {
    using ColMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
    const ColMat Ac = A;   // BDCSVD works column by column
    Eigen::BDCSVD<ColMat> svd(Ac, Eigen::ComputeThinU | Eigen::ComputeThinV);
    LowRankT<S> r;
    r.sigma = svd.singularValues().head(k);
    r.left = svd.matrixU().leftCols(k) * r.sigma.asDiagonal();   // [m, k]  U_k Σ_k
    r.right = svd.matrixV().leftCols(k).transpose();             // [k, n]  V_kᵀ
    return r;
}

class Svd final : public LowRankApproximator {
public:
    std::string_view name() const override { return "svd"; }

protected:
    LowRankT<float> run(CRefT<float> A, int k, Rng&) const override { return svd_lowrank<float>(A, k); }
    LowRankT<double> run(CRefT<double> A, int k, Rng&) const override { return svd_lowrank<double>(A, k); }
};

}  // namespace

std::unique_ptr<LowRankApproximator> make_svd(const LowRankOptions&) { return std::make_unique<Svd>(); }

}  // namespace kvlab
