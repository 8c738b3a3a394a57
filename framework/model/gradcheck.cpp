#include "model/gradcheck.h"

#include "core/rng.h"

#include <cmath>

namespace kvlab {

std::vector<TensorCheck> check_gradients(Transformer<double>& m, const int32_t* inputs, const int32_t* targets, int B,
                                         int T, uint64_t seed, double eps) {
    m.zero_grad();
    m.forward(inputs, targets, B, T);
    m.backward();
    const std::vector<double> grad(m.grad_data(), m.grad_data() + m.n_params());
    Rng rng = Rng::stream(seed, /*stream id: gradcheck directions*/ 7);
    std::vector<TensorCheck> out;
    for (const auto& np : m.params()) {
        const int64_t n = np.spec.numel();
        double* w = m.param_data() + np.offset;
        std::vector<double> v(n), saved(w, w + n);
        // a random unit direction: the step ε·v has length ε whatever the tensor's size
        double vv = 0, analytic = 0;
        for (int64_t i = 0; i < n; ++i) v[i] = rng.normal(), vv += v[i] * v[i];
        for (int64_t i = 0; i < n; ++i) {
            v[i] /= std::sqrt(vv);
            analytic += grad[np.offset + i] * v[i];
        }
        for (int64_t i = 0; i < n; ++i) w[i] = saved[i] + eps * v[i];
        const double lp = m.forward(inputs, targets, B, T);
        for (int64_t i = 0; i < n; ++i) w[i] = saved[i] - eps * v[i];
        const double lm = m.forward(inputs, targets, B, T);
        std::copy(saved.begin(), saved.end(), w);
        const double numeric = (lp - lm) / (2 * eps);
        const double denom = std::max({std::abs(analytic), std::abs(numeric), 1e-12});
        out.push_back({np.spec.name, analytic, numeric, std::abs(analytic - numeric) / denom});
    }
    return out;
}

}  // namespace kvlab
