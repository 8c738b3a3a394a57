// Low-rank approximators (style.md §5): every method returns A ≈ left · right, so callers
// never special-case one. The list lives in lowrank/registry.cpp; `kvlab list` prints it,
// tests/test_lowrank.cpp runs every entry in float and double, and lowrank/compress.h uses
// them to turn a trained MHA/GQA checkpoint into a latent_kv one.
//
// Conventions:
//   * A is [m, n] row-major (a weight [out, in] as model.md stores it); k is the rank.
//   * approximate() checks 1 <= k <= min(m, n) (kvlab::Error naming k and the shape) and
//     that A is finite, then calls the method. left is [m, k], right is [k, n].
//   * Randomness comes only from the Rng passed in (rsvd); the other methods are
//     deterministic and ignore it. The same Rng state gives the same result.
//   * Methods are templated on the scalar: float for real use, double for tests.
#pragma once

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kvlab {

template <class S>
struct LowRankT {
    MatT<S> left;                      // [m, k]
    MatT<S> right;                     // [k, n]        A ≈ left · right
    VecT<S> sigma;                     // svd / rsvd: the k leading singular values (else empty)
    std::vector<int64_t> cols, rows;   // qrcp / cur: the selected column / row indices (else empty)
};
using LowRank = LowRankT<float>;

// A method's own options (e.g. rsvd's oversample), as text: "oversample" -> "10".
using LowRankOptions = std::map<std::string, std::string>;

class LowRankApproximator {
public:
    virtual ~LowRankApproximator() = default;
    virtual std::string_view name() const = 0;

    LowRankT<float> approximate(CRefT<float> A, int k, Rng& rng) const {
        check(A.rows(), A.cols(), k, A.allFinite());
        return run(A, k, rng);
    }
    LowRankT<double> approximate(CRefT<double> A, int k, Rng& rng) const {
        check(A.rows(), A.cols(), k, A.allFinite());
        return run(A, k, rng);
    }

protected:
    virtual LowRankT<float> run(CRefT<float> A, int k, Rng& rng) const = 0;
    virtual LowRankT<double> run(CRefT<double> A, int k, Rng& rng) const = 0;

private:
    void check(Eigen::Index m, Eigen::Index n, int k, bool finite) const {
        const Eigen::Index mn = std::min(m, n);
        if (k < 1 || k > mn)
            throw Error(fmt::format("{}: rank k = {} is impossible for a [{}, {}] matrix (need 1 <= k <= {})", name(), k,
                                    m, n, mn));
        if (!finite) throw Error(fmt::format("{}: the [{}, {}] matrix holds NaN or infinite values", name(), m, n));
    }
};

// An option a method reads (listed by `kvlab list`).
struct LowRankKey {
    std::string_view name;
    std::string_view help;
};

struct LowRankEntry {
    std::string_view name;
    std::string_view description;
    std::vector<LowRankKey> own_keys;
    // Validates the options (every key is one of own_keys; the registry checks that) and
    // builds the method; a bad value is a kvlab::Error naming the key.
    std::unique_ptr<LowRankApproximator> (*make)(const LowRankOptions&);
};

const std::vector<LowRankEntry>& lowrank_registry();
// kvlab::Error listing every registered name.
const LowRankEntry& find_lowrank(std::string_view name);
// find_lowrank(name).make(options), after checking that every option is one of its keys.
std::unique_ptr<LowRankApproximator> make_lowrank(std::string_view name, const LowRankOptions& options = {});
// "a=1,b=2" -> {a: 1, b: 2}; kvlab::Error for an item without '='.
LowRankOptions parse_lowrank_options(const std::string& text);

// Helpers shared by the methods and their callers.
namespace lowrank {
// Reads an integer option, `fallback` when absent; kvlab::Error naming method and key
// when it is not an integer in [lo, hi].
int64_t int_option(const LowRankOptions& o, std::string_view method, const std::string& key, int64_t fallback,
                   int64_t lo, int64_t hi);
// ‖A − left·right‖_F / ‖A‖_F (0 for A = 0), accumulated in double.
template <class S>
double rel_error(CRefT<S> A, const LowRankT<S>& r);
// The Eckart–Young optimum of rank k: sqrt(Σ_{i>k} σ_i²) / ‖A‖_F, σ from a double SVD.
template <class S>
double optimal_rel_error(CRefT<S> A, int k);
}  // namespace lowrank

}  // namespace kvlab
