// The list of low-rank approximators. Add a line here (and the source file to
// CMakeLists.txt); tests/test_lowrank.cpp, `kvlab list`, `kvlab approx` and
// `kvlab compress` pick it up.
#include "lowrank/lowrank.h"

#include <Eigen/SVD>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace kvlab {

std::unique_ptr<LowRankApproximator> make_svd(const LowRankOptions&);    // svd.cpp
std::unique_ptr<LowRankApproximator> make_qrcp(const LowRankOptions&);   // qrcp.cpp
std::unique_ptr<LowRankApproximator> make_rsvd(const LowRankOptions&);   // rsvd.cpp
std::unique_ptr<LowRankApproximator> make_cur(const LowRankOptions&);    // cur.cpp

const std::vector<LowRankEntry>& lowrank_registry() {
    static const std::vector<LowRankEntry> entries = {
        // name    description                                                     own keys                      factory
        {"svd", "truncated SVD (Eckart-Young optimal): left = U_k Σ_k, right = V_kᵀ", {}, make_svd},
        {"qrcp", "QR with column pivoting (Businger-Golub): left = Q_k, right = R_k Pᵀ", {}, make_qrcp},
        {"rsvd", "randomized SVD (Halko-Martinsson-Tropp 2011), Gaussian sketch + power iterations",
         {{"oversample", "extra sketch columns p (default 10)"},
          {"power_iters", "power iterations q (default 7 if k < 0.1·min(m,n) else 4, as scikit-learn)"}},
         make_rsvd},
        {"cur", "CUR: k actual columns and rows of A, U = C⁺ A R⁺ (Mahoney-Drineas)",
         {{"select", "how columns/rows are chosen: qr (pivoted QR, default) or leverage (top-k leverage scores)"}},
         make_cur},
    };
    return entries;
}

const LowRankEntry& find_lowrank(std::string_view name) {
    for (const auto& e : lowrank_registry())
        if (e.name == name) return e;
    std::string names;
    for (const auto& e : lowrank_registry()) names += (names.empty() ? "" : ", ") + std::string(e.name);
    throw Error(fmt::format("unknown low-rank method \"{}\"; registered: {} (see: kvlab list)", name, names));
}

std::unique_ptr<LowRankApproximator> make_lowrank(std::string_view name, const LowRankOptions& options) {
    const auto& e = find_lowrank(name);
    for (const auto& [k, v] : options) {
        bool known = false;
        for (const auto& key : e.own_keys) known |= key.name == k;
        if (!known) {
            std::string keys;
            for (const auto& key : e.own_keys) keys += (keys.empty() ? "" : ", ") + std::string(key.name);
            throw Error(fmt::format("low-rank method \"{}\" has no option \"{}\" (its options: {})", name, k,
                                    keys.empty() ? "none" : keys));
        }
    }
    return e.make(options);
}

LowRankOptions parse_lowrank_options(const std::string& text) {
    LowRankOptions o;
    size_t start = 0;
    while (start <= text.size() && !text.empty()) {
        const size_t end = std::min(text.find(',', start), text.size());
        const std::string item = text.substr(start, end - start);
        const size_t eq = item.find('=');
        if (eq == std::string::npos || eq == 0)
            throw Error(fmt::format("method option \"{}\" should be key=value (e.g. oversample=10)", item));
        o[item.substr(0, eq)] = item.substr(eq + 1);
        start = end + 1;
    }
    return o;
}

namespace lowrank {

int64_t int_option(const LowRankOptions& o, std::string_view method, const std::string& key, int64_t fallback,
                   int64_t lo, int64_t hi) {
    auto it = o.find(key);
    if (it == o.end()) return fallback;
    char* end = nullptr;
    const long long v = std::strtoll(it->second.c_str(), &end, 10);
    if (it->second.empty() || *end != '\0' || v < lo || v > hi)
        throw Error(
            fmt::format("{}: option {} must be an integer in {}..{}, got \"{}\"", method, key, lo, hi, it->second));
    return v;
}

template <class S>
double rel_error(CRefT<S> A, const LowRankT<S>& r) {
    const MatD Ad = A.template cast<double>();
    const double nA = Ad.norm();
    if (nA == 0) return 0;
    return (Ad - r.left.template cast<double>() * r.right.template cast<double>()).norm() / nA;
}

template <class S>
double optimal_rel_error(CRefT<S> A, int k) {
    const Eigen::MatrixXd Ad = A.template cast<double>();
    const Eigen::VectorXd s = Eigen::BDCSVD<Eigen::MatrixXd>(Ad).singularValues();
    const double total = s.squaredNorm();
    if (total == 0) return 0;
    const Eigen::Index kk = std::min<Eigen::Index>(k, s.size());
    return std::sqrt(s.tail(s.size() - kk).squaredNorm() / total);
}

template double rel_error<float>(CRefT<float>, const LowRankT<float>&);
template double rel_error<double>(CRefT<double>, const LowRankT<double>&);
template double optimal_rel_error<float>(CRefT<float>, int);
template double optimal_rel_error<double>(CRefT<double>, int);

}  // namespace lowrank
}  // namespace kvlab
