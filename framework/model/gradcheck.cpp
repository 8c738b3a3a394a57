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
        // A unit direction: half along this tensor's analytic gradient, half random. Along
        // the gradient the directional derivative is large (|g|, not |g|/sqrt(n) as for a
        // purely random direction), so round-off stays far below a 1% error; the random
        // half still probes components the analytic gradient might miss.
        double gg = 0, rr = 0;
        for (int64_t i = 0; i < n; ++i) gg += grad[np.offset + i] * grad[np.offset + i];
        for (int64_t i = 0; i < n; ++i) v[i] = rng.normal(), rr += v[i] * v[i];
        const double gs = gg > 0 ? 1.0 / std::sqrt(gg) : 0.0, rs = 1.0 / std::sqrt(rr);
        double vv = 0;
        for (int64_t i = 0; i < n; ++i) v[i] = grad[np.offset + i] * gs + v[i] * rs, vv += v[i] * v[i];
        double analytic = 0;
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
