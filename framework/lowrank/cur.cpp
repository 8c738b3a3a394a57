// CUR decomposition: A ≈ C U R with C = A[:, cols] (k actual columns), R = A[rows, :] (k
// actual rows) and the Frobenius-optimal core for that C and R,
//   U = C⁺ A R⁺ [k, k]     (Mahoney & Drineas 2009, "CUR matrix decompositions for
//                           improved data analysis", PNAS 106(3); Stewart 1999)
//   left = C U [m, k],  right = R [k, n],  cols, rows = the selected indices
// Selection (option `select`):
//   qr (default)  the first k pivots of QR with column pivoting of A (columns) and of Aᵀ
//                 (rows): deterministic, greedy maximal-volume (Businger-Golub, see qrcp.cpp)
//   leverage      the k largest rank-k leverage scores ‖V_k[j, :]‖² (columns) and
//                 ‖U_k[i, :]‖² (rows) from a thin SVD; deterministic top-k selection
//                 (Papailiopoulos, Kyrillidis & Boutsidis 2014) rather than Mahoney-Drineas'
//                 random sampling, so no Rng is needed; ties go to the lower index.
// If A has rank k, C spans its column space and R its row space (for any selection whose
// C and R have rank k, which pivoted QR guarantees), so C C⁺ A R⁺ R = A exactly.
// The pseudo-inverses are applied with complete orthogonal decompositions (rank-revealing,
// minimum-norm least squares): C⁺A = cod(C).solve(A), (C⁺A) R⁺ = cod(Rᵀ).solve((C⁺A)ᵀ)ᵀ.
// Cost: two full pivoted QRs, O(mn·min(m, n)) (see qrcp.cpp), or one thin SVD for
// leverage; then about 2mnk (C⁺A) + 2nk² (·R⁺) + 2mk² (C·U) + O((m+n)k²) for the CODs.
// Deterministic: ignores rng.
#include "lowrank/lowrank.h"

#include <Eigen/QR>
#include <Eigen/SVD>

#include <algorithm>
#include <numeric>

namespace kvlab {
namespace {

template <class S>
using ColMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

// The first k pivots of QR with column pivoting of X: the k columns picked first.
template <class S>
std::vector<int64_t> pivoted_columns(const ColMat<S>& X, int k) {
    Eigen::ColPivHouseholderQR<ColMat<S>> qr(X);
    const auto& p = qr.colsPermutation().indices();
    return std::vector<int64_t>(p.data(), p.data() + k);
}

// Indices of the k largest squared row norms of Y (ties: lower index first).
template <class S>
std::vector<int64_t> top_rows(const ColMat<S>& Y, int k) {
    std::vector<int64_t> idx(Y.rows());
    std::iota(idx.begin(), idx.end(), 0);
    const VecT<S> score = Y.rowwise().squaredNorm();
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return score(a) > score(b); });
    idx.resize(k);
    return idx;
}

template <class S>
LowRankT<S> cur_lowrank(CRefT<S> A, int k, bool leverage) {
    const Eigen::Index m = A.rows(), n = A.cols();
    const ColMat<S> Ac = A;
    LowRankT<S> r;
    if (leverage) {
        Eigen::BDCSVD<ColMat<S>> svd(Ac, Eigen::ComputeThinU | Eigen::ComputeThinV);
        r.cols = top_rows<S>(svd.matrixV().leftCols(k), k);   // column leverage ‖V_k[j, :]‖²
        r.rows = top_rows<S>(svd.matrixU().leftCols(k), k);   // row leverage ‖U_k[i, :]‖²
    } else {
        r.cols = pivoted_columns<S>(Ac, k);
        r.rows = pivoted_columns<S>(Ac.transpose(), k);
    }
    ColMat<S> C(m, k), R(k, n);                                // C = A[:, cols], R = A[rows, :]
    for (int j = 0; j < k; ++j) C.col(j) = Ac.col(r.cols[j]);
    for (int i = 0; i < k; ++i) R.row(i) = Ac.row(r.rows[i]);
    // U = C⁺ A R⁺
    const ColMat<S> CpA = Eigen::CompleteOrthogonalDecomposition<ColMat<S>>(C).solve(Ac);   // [k, n]
    const ColMat<S> Rt = R.transpose();
    const ColMat<S> U =
        Eigen::CompleteOrthogonalDecomposition<ColMat<S>>(Rt).solve(ColMat<S>(CpA.transpose())).transpose();   // [k, k]
    r.left = C * U;   // [m, k]
    r.right = R;      // [k, n]
    return r;
}

class Cur final : public LowRankApproximator {
public:
    explicit Cur(bool leverage) : leverage_(leverage) {}
    std::string_view name() const override { return "cur"; }

protected:
    LowRankT<float> run(CRefT<float> A, int k, Rng&) const override { return cur_lowrank<float>(A, k, leverage_); }
    LowRankT<double> run(CRefT<double> A, int k, Rng&) const override { return cur_lowrank<double>(A, k, leverage_); }

private:
    bool leverage_;
};

}  // namespace

std::unique_ptr<LowRankApproximator> make_cur(const LowRankOptions& o) {
    const auto it = o.find("select");
    const std::string select = it == o.end() ? "qr" : it->second;
    if (select != "qr" && select != "leverage")
        throw Error(fmt::format("cur: option select must be qr or leverage, got \"{}\"", select));
    return std::make_unique<Cur>(select == "leverage");
}

}  // namespace kvlab
