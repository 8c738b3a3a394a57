// QR with column pivoting (Businger & Golub 1965, "Linear least squares solutions by
// Householder transformations"; LAPACK geqp3): at step j the remaining column of largest
// norm is swapped to position j, then a Householder reflector zeroes it below the
// diagonal. With P the column permutation:
//   A P = Q R,  |R_00| ≥ |R_11| ≥ … (the pivoting makes the diagonal non-increasing)
//   rank-k truncation: A ≈ Q_k R_k Pᵀ, Q_k = first k columns of Q [m, k],
//                      R_k = first k rows of R [k, n]
//   left = Q_k,  right = R_k Pᵀ (column p_j of right is column j of R_k),
//   cols = p_0..p_{k−1}, the k columns of A picked first.
// The error is ‖R_22‖_F (the trailing block), within a factor that can grow like 2^k of
// the Eckart–Young optimum in the worst case (Kahan's matrix) but is usually close to it;
// the selected columns are what CUR reuses.
// Computed with Eigen's ColPivHouseholderQR (unblocked, norm downdating with recomputation
// as LAPACK's laqp2) on a column-major copy. Eigen always factors completely:
// about 4mn·min(m,n) − 2(m+n)·min(m,n)² + 4min(m,n)³/3 flops (2mn² − 2n³/3 for m ≥ n;
// a k-step truncated factorisation would cost 4mnk − 2k²(m+n) + 4k³/3), plus 4mk² to
// form Q_k. Deterministic: ignores rng.
#include "lowrank/lowrank.h"

#include <Eigen/QR>

namespace kvlab {
namespace {

template <class S>
LowRankT<S> qrcp_lowrank(CRefT<S> A, int k) {
    using ColMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
    const Eigen::Index m = A.rows(), n = A.cols();
    const ColMat Ac = A;
    Eigen::ColPivHouseholderQR<ColMat> qr(Ac);
    const auto& p = qr.colsPermutation().indices();   // A P: column j of A P is column p[j] of A
    LowRankT<S> r;
    // Q_k = H_0 … H_{k−1} applied to the first k unit vectors (later reflectors leave them alone)
    ColMat Qk = qr.householderQ().setLength(k) * ColMat::Identity(m, k);
    r.left = Qk;                                                                    // [m, k]
    const ColMat Rk = qr.matrixQR().topRows(k).template triangularView<Eigen::Upper>();   // [k, n]
    r.right.resize(k, n);                                                           // R_k Pᵀ
    for (Eigen::Index j = 0; j < n; ++j) r.right.col(p[j]) = Rk.col(j);
    r.cols.assign(p.data(), p.data() + k);
    return r;
}

class Qrcp final : public LowRankApproximator {
public:
    std::string_view name() const override { return "qrcp"; }

protected:
    LowRankT<float> run(CRefT<float> A, int k, Rng&) const override { return qrcp_lowrank<float>(A, k); }
    LowRankT<double> run(CRefT<double> A, int k, Rng&) const override { return qrcp_lowrank<double>(A, k); }
};

}  // namespace

std::unique_ptr<LowRankApproximator> make_qrcp(const LowRankOptions&) { return std::make_unique<Qrcp>(); }

}  // namespace kvlab
