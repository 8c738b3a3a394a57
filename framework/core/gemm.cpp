#include "core/gemm.h"

#include "core/error.h"
#include "core/rng.h"

#include <dlfcn.h>
#include <omp.h>

#include <climits>
#include <cstdlib>
#include <mutex>
#include <optional>

#ifndef KVLAB_OPENBLAS_OPENMP
#define KVLAB_OPENBLAS_OPENMP "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0"
#endif

namespace kvlab::gemm {

namespace {

// CBLAS's enums as integers (cblas.h is not needed to call through a pointer).
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
using DgemmFn = void (*)(int, int, int, int, int, int, double, const double*, int, const double*, int, double, double*,
                         int);

struct Blas {
    SgemmFn sgemm = nullptr;
    DgemmFn dgemm = nullptr;
};

Info g_info;
Blas g_blas;            // set only when g_info.backend == openblas
// Written once inside init()'s call_once, which orders it before every later read.
const Blas* g_active = nullptr;

// Below this many multiply-adds (or for a matrix-vector shape) Eigen's product is used
// whichever the backend: a BLAS call costs about a microsecond of fixed overhead.
constexpr double kMinBlasWork = 32.0 * 32 * 32;

template <class S>
void eigen_product(bool ta, bool tb, RefT<S> C, CRefT<S> A, CRefT<S> B, Acc acc) {
    if (!ta && tb) {
        if (acc) C.noalias() += A * B.transpose();
        else C.noalias() = A * B.transpose();
    } else if (!ta && !tb) {
        if (acc) C.noalias() += A * B;
        else C.noalias() = A * B;
    } else if (ta && !tb) {
        if (acc) C.noalias() += A.transpose() * B;
        else C.noalias() = A.transpose() * B;
    } else {
        if (acc) C.noalias() += A.transpose() * B.transpose();
        else C.noalias() = A.transpose() * B.transpose();
    }
}

// The leading dimension BLAS wants for a row-major block: its row stride, at least its
// width (a one-row Ref may report any stride).
template <class M>
int ld(const M& x) {
    return static_cast<int>(x.rows() > 1 ? x.outerStride() : std::max<Eigen::Index>(x.cols(), 1));
}

template <class S>
void blas_call(const Blas& b, bool ta, bool tb, RefT<S> C, CRefT<S> A, CRefT<S> B, Acc acc) {
    const int m = static_cast<int>(C.rows()), n = static_cast<int>(C.cols());
    const int k = static_cast<int>(ta ? A.rows() : A.cols());
    const S beta = acc ? S(1) : S(0);
    if constexpr (std::is_same_v<S, float>)
        b.sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, m, n, k, 1.0f, A.data(), ld(A), B.data(),
                ld(B), beta, C.data(), ld(C));
    else
        b.dgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, m, n, k, 1.0, A.data(), ld(A), B.data(),
                ld(B), beta, C.data(), ld(C));
}

template <class S>
void product(bool ta, bool tb, RefT<S> C, CRefT<S> A, CRefT<S> B, Acc acc) {
    const Eigen::Index m = C.rows(), n = C.cols(), k = ta ? A.rows() : A.cols();
    KV_CHECK((ta ? A.cols() : A.rows()) == m && (tb ? B.rows() : B.cols()) == n && (tb ? B.cols() : B.rows()) == k,
             "gemm: C [{}, {}] from A [{}, {}]{} and B [{}, {}]{}", m, n, A.rows(), A.cols(), ta ? "^T" : "",
             B.rows(), B.cols(), tb ? "^T" : "");
    if (m == 0 || n == 0) return;
    init();
    const Blas* b = g_active;
    if (b && k > 0 && m > 1 && n > 1 && double(m) * double(n) * double(k) >= kMinBlasWork &&
        std::max({m, n, k, A.outerStride(), B.outerStride(), C.outerStride()}) < INT_MAX)
        blas_call<S>(*b, ta, tb, C, A, B, acc);
    else
        eigen_product<S>(ta, tb, C, A, B, acc);
}

// ------------------------------------------------------------------ choosing and checking

std::string env(const char* name) {
    const char* v = std::getenv(name);
    return v ? std::string(v) : std::string();
}

bool equal_ci(const std::string& a, const std::string& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    return true;
}

template <class S>
MatT<S> random_matrix(Rng& rng, Eigen::Index r, Eigen::Index c) {
    MatT<S> x(r, c);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<S>(rng.uniform() * 2 - 1);
    return x;
}

// One product through `b` against Eigen's in double: every element within 4·k·ε of the
// scale Σ|a||b| of its own sum (a kernel that computes the wrong thing is off by O(1)).
// The operands are blocks of larger matrices (strides ≠ widths) when `strided`.
template <class S>
std::optional<std::string> check_product(const Blas& b, bool ta, bool tb, int m, int n, int k, bool strided,
                                         bool accumulate, int threads_inside, Rng& rng) {
    const int pad = strided ? 3 : 0;
    const MatT<S> Abig = random_matrix<S>(rng, (ta ? k : m) + pad, (ta ? m : k) + pad);
    const MatT<S> Bbig = random_matrix<S>(rng, (tb ? n : k) + pad, (tb ? k : n) + pad);
    MatT<S> Cbig = random_matrix<S>(rng, m + pad, n + pad);
    const CRefT<S> A = Abig.block(pad, pad, ta ? k : m, ta ? m : k);
    const CRefT<S> B = Bbig.block(pad, pad, tb ? n : k, tb ? k : n);
    const MatD Ad = A.template cast<double>(), Bd = B.template cast<double>();
    const MatD opA = ta ? MatD(Ad.transpose()) : Ad, opB = tb ? MatD(Bd.transpose()) : Bd;
    MatD ref = opA * opB;
    const MatD scale = opA.cwiseAbs() * opB.cwiseAbs();
    if (accumulate) ref += Cbig.block(pad, pad, m, n).template cast<double>();
    const MatT<S> C0 = Cbig;
    std::vector<MatT<S>> out(std::max(threads_inside, 1), C0);
    auto run = [&](MatT<S>& Cm) {
        RefT<S> C = Cm.block(pad, pad, m, n);
        blas_call<S>(b, ta, tb, C, A, B, accumulate ? add : set);
    };
    if (threads_inside > 1) {
        // Concurrent calls from inside one OpenMP parallel region, as the attention loops make.
#pragma omp parallel for num_threads(threads_inside) schedule(static, 1)
        for (int t = 0; t < threads_inside; ++t) run(out[size_t(t)]);
    } else {
        run(out[0]);
    }
    const double tol = 4.0 * (k + 1) * double(std::numeric_limits<S>::epsilon());
    for (const auto& Cm : out) {
        for (Eigen::Index i = 0; i < Cm.rows(); ++i)
            for (Eigen::Index j = 0; j < Cm.cols(); ++j) {
                const bool inside = i >= pad && j >= pad;
                const double got = double(Cm(i, j));
                if (!inside) {
                    if (got != double(C0(i, j)))
                        return fmt::format("{}gemm {}{} {}x{}x{} wrote outside C at ({}, {})",
                                           sizeof(S) == 4 ? 's' : 'd', ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, i, j);
                    continue;
                }
                const double want = ref(i - pad, j - pad), bound = tol * (scale(i - pad, j - pad) + 1e-30);
                if (!(std::abs(got - want) <= bound + (accumulate ? tol * std::abs(double(C0(i, j))) : 0.0)))
                    return fmt::format("{}gemm {}{} {}x{}x{}{}{}: C({}, {}) = {} where {} is right",
                                       sizeof(S) == 4 ? 's' : 'd', ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k,
                                       accumulate ? " (C +=)" : "", threads_inside > 1 ? " in a parallel region" : "",
                                       i - pad, j - pad, got, want);
            }
    }
    return std::nullopt;
}

// The shapes: tiny, odd, wider than a kernel's register block in every direction, and one
// large enough that OpenBLAS splits it between threads (run with all of kvlab's threads).
std::optional<std::string> verify(const Blas& b) {
    Rng rng(20261129);
    struct Shape {
        int m, n, k;
    };
    const Shape shapes[] = {{2, 3, 1}, {7, 5, 3}, {33, 65, 17}, {130, 70, 257}, {61, 300, 129}};
    for (const bool ta : {false, true})
        for (const bool tb : {false, true})
            for (const auto& s : shapes)
                for (const bool strided : {false, true}) {
                    const bool acc = strided;   // half of the products accumulate
                    if (auto e = check_product<float>(b, ta, tb, s.m, s.n, s.k, strided, acc, 1, rng)) return e;
                    if (auto e = check_product<double>(b, ta, tb, s.m, s.n, s.k, strided, acc, 1, rng)) return e;
                }
    // Threads: products OpenBLAS splits between all threads (m·n·k above its 2^18
    // threshold), then concurrent calls.
    if (auto e = check_product<float>(b, false, true, 192, 160, 128, false, false, 1, rng)) return e;
    if (auto e = check_product<float>(b, true, false, 160, 128, 192, true, true, 1, rng)) return e;
    if (auto e = check_product<float>(b, false, false, 120, 96, 80, true, false, 2, rng)) return e;
    if (auto e = check_product<double>(b, false, true, 128, 96, 112, false, false, 1, rng)) return e;
    return std::nullopt;
}

// Loads OpenBLAS with `core` as its core type, leaving OPENBLAS_CORETYPE as it was found.
// Returns an error message, or fills `b` and `info`.
std::optional<std::string> load_openblas(const std::string& path, const std::string& core, Blas& b, Info& info) {
    const std::string saved = env("OPENBLAS_CORETYPE");
    const bool had = std::getenv("OPENBLAS_CORETYPE") != nullptr;
    if (!core.empty()) setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (had) setenv("OPENBLAS_CORETYPE", saved.c_str(), 1);
    else unsetenv("OPENBLAS_CORETYPE");
    if (!h) {
        const char* e = dlerror();
        return fmt::format("cannot load {} ({}); Debian: apt-get install libopenblas0-openmp", path,
                           e ? e : "unknown error");
    }
    using CoreName = char* (*)();
    using Parallel = int (*)();
    auto corename = reinterpret_cast<CoreName>(dlsym(h, "openblas_get_corename"));
    auto parallel = reinterpret_cast<Parallel>(dlsym(h, "openblas_get_parallel"));
    b.sgemm = reinterpret_cast<SgemmFn>(dlsym(h, "cblas_sgemm"));
    b.dgemm = reinterpret_cast<DgemmFn>(dlsym(h, "cblas_dgemm"));
    if (!corename || !parallel || !b.sgemm || !b.dgemm)
        return fmt::format("{} is not OpenBLAS (no openblas_get_corename, openblas_get_parallel or cblas_?gemm)",
                           path);
    // 0 sequential, 1 pthreads, 2 OpenMP: a pthreads build would run its own threads
    // beside kvlab's OpenMP ones (1.7–2.4× slower when both are busy).
    if (parallel() != 2)
        return fmt::format("{} is not the OpenMP build of OpenBLAS (openblas_get_parallel() = {}); Debian: "
                           "apt-get install libopenblas0-openmp",
                           path, parallel());
    info.library = path;
    info.core = corename() ? corename() : "";
    return std::nullopt;
}

std::string mode_from_env() {
    const std::string mode = env("KVLAB_GEMM").empty() ? "auto" : env("KVLAB_GEMM");
    if (mode != "auto" && mode != "openblas" && mode != "eigen")
        throw Error(fmt::format("KVLAB_GEMM=\"{}\": allowed are auto (the default), openblas and eigen", mode));
    return mode;
}

Info choose() {
    Info info;
    const std::string mode = mode_from_env();
    if (mode == "eigen") {
        info.why = "KVLAB_GEMM=eigen";
        return info;
    }
    const std::string override_core = env("KVLAB_OPENBLAS_CORETYPE");
    info.requested = override_core.empty() ? cpu_core_type() : override_core;
    auto fallback = [&](const std::string& why) {
        if (mode == "openblas") throw Error(fmt::format("KVLAB_GEMM=openblas: {}", why));
        info = Info{};
        info.why = why;
        return info;
    };
    if (info.requested.empty())
        return fallback("this CPU has neither AVX-512 (F, BW, DQ, VL) nor AVX2 with FMA usable; Eigen's GEMM");
    const std::string path = env("KVLAB_OPENBLAS_LIB").empty() ? KVLAB_OPENBLAS_OPENMP : env("KVLAB_OPENBLAS_LIB");
    Blas b;
    if (auto e = load_openblas(path, info.requested, b, info)) return fallback(*e);
    // The references run in Eigen on one thread: this check runs at every start, and
    // idle-spinning OpenMP threads made it cost more than the products themselves.
    const int eigen_threads = Eigen::nbThreads();
    Eigen::setNbThreads(1);
    const auto failed = verify(b);
    Eigen::setNbThreads(eigen_threads);
    if (const auto& e = failed)
        return fallback(fmt::format("OpenBLAS core {} (asked for {}) computes wrong products: {}", info.core,
                                    info.requested, *e));
    info.backend = Backend::openblas;
    info.why = override_core.empty() ? "core type chosen from the CPU's features, products checked"
                                     : "core type from KVLAB_OPENBLAS_CORETYPE, products checked";
    if (!equal_ci(info.core, info.requested))   // OpenBLAS ignores a name it does not know
        info.why += fmt::format("; OpenBLAS runs {} instead of the {} asked for", info.core, info.requested);
    g_blas = b;
    return info;
}

}  // namespace

std::string cpu_core_type() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    // libgcc and compiler-rt report AVX/AVX-512 features only when the OS saves their state.
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
    return "";
}

std::string Info::describe() const {
    if (backend == Backend::eigen) return fmt::format("Eigen {}.{}.{} GEMM ({})", EIGEN_WORLD_VERSION,
                                                      EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION, why);
    return fmt::format("OpenBLAS, core {} (asked for {}), OpenMP build {}; {}", core, requested, library, why);
}

void check_env() { mode_from_env(); }

std::string Info::brief() const {
    return backend == Backend::eigen ? std::string("GEMM: Eigen") : "GEMM: OpenBLAS " + core;
}

const Info& init() {
    static std::once_flag once;
    static std::optional<Error> failure;
    std::call_once(once, [] {
        try {
            g_info = choose();
            g_active = g_info.backend == Backend::openblas ? &g_blas : nullptr;
        } catch (const Error& e) {
            failure = e;
        }
    });
    if (failure) throw *failure;
    return g_info;
}

void nt(RefT<float> C, CRefT<float> A, CRefT<float> B, Acc acc) { product<float>(false, true, C, A, B, acc); }
void nt(RefT<double> C, CRefT<double> A, CRefT<double> B, Acc acc) { product<double>(false, true, C, A, B, acc); }
void nn(RefT<float> C, CRefT<float> A, CRefT<float> B, Acc acc) { product<float>(false, false, C, A, B, acc); }
void nn(RefT<double> C, CRefT<double> A, CRefT<double> B, Acc acc) { product<double>(false, false, C, A, B, acc); }
void tn(RefT<float> C, CRefT<float> A, CRefT<float> B, Acc acc) { product<float>(true, false, C, A, B, acc); }
void tn(RefT<double> C, CRefT<double> A, CRefT<double> B, Acc acc) { product<double>(true, false, C, A, B, acc); }

void eigen_nn(RefT<float> C, CRefT<float> A, CRefT<float> B, Acc acc) { eigen_product<float>(false, false, C, A, B, acc); }

}  // namespace kvlab::gemm
