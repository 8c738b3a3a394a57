// Eigen aliases. Everything is row-major so that memory, HDF5 and PyTorch agree:
// a linear map from `in` to `out` features is W [out, in] and y = x Wᵀ.
// Activations are [B*T, width], batch-major (row b*T + t); one head is a column block.
#pragma once

#include <Eigen/Core>

#include <cstdint>
#include <string>
#include <vector>

namespace kvlab {

template <class S>
using MatT = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class S>
using VecT = Eigen::Matrix<S, Eigen::Dynamic, 1>;
template <class S>
using RowVecT = Eigen::Matrix<S, 1, Eigen::Dynamic>;
template <class S>
using MapT = Eigen::Map<MatT<S>>;
template <class S>
using CMapT = Eigen::Map<const MatT<S>>;
template <class S>
using RefT = Eigen::Ref<MatT<S>>;              // outputs; accepts column blocks (strided)
template <class S>
using CRefT = Eigen::Ref<const MatT<S>>;       // inputs

using Mat = MatT<float>;
using MatD = MatT<double>;

// A named tensor shape, exactly as model.md names it ("wq", {H*dh, D}).
struct ParamSpec {
    std::string name;
    std::vector<int64_t> shape;
    // Decoupled weight decay applies to matrices only, never to RMSNorm gains.
    bool decay() const { return shape.size() >= 2; }
    int64_t numel() const {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        return n;
    }
};

}  // namespace kvlab
