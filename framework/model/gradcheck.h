// Finite-difference gradient check of the whole model, per parameter tensor: for a
// unit direction v restricted to the tensor (half along its analytic gradient, half random), compare the analytic directional
// derivative ⟨∇θ L, v⟩ with the central difference (L(θ + εv) − L(θ − εv)) / 2ε.
// Run on the double instantiation, where agreement to ~1e-7 relative is expected, so a
// 1% error in any single gradient tensor stands out by orders of magnitude.
#pragma once

#include "model/transformer.h"

#include <string>
#include <vector>

namespace kvlab {

struct TensorCheck {
    std::string name;
    double analytic = 0, numeric = 0, rel_error = 0;
};

// model must hold the parameters to check; its gradient arena is overwritten.
std::vector<TensorCheck> check_gradients(Transformer<double>& model, const int32_t* inputs, const int32_t* targets,
                                         int B, int T, uint64_t seed, double eps = 1e-5);

}  // namespace kvlab
