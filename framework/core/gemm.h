// The model's matrix products, C = op(A)·op(B) or C += op(A)·op(B), on row-major float or
// double matrices (and their blocks: any outer stride, unit inner stride).
//
// One backend per process, chosen at the first product (or by gemm::init()):
//   openblas  Debian's OpenMP build of OpenBLAS, loaded at run time (dlopen) with a core
//             type kvlab picks from the CPU's features: SkylakeX where AVX-512 F/BW/DQ/VL
//             run (and the OS saves their registers), Haswell where AVX2 and FMA do. Its
//             products are checked against Eigen's on every transposition, odd and strided
//             shapes, one and several threads, before any is used; a core type that fails
//             is not used. The OpenMP build shares kvlab's OpenMP threads: a product
//             called inside a parallel region runs on its calling thread, one called
//             outside uses omp_get_max_threads() threads. No second thread pool.
//   eigen     Eigen's own GEMM, built for the host (-march=native): when no OpenMP build
//             of OpenBLAS is installed, when the CPU has neither AVX-512 nor AVX2+FMA, when
//             the check fails, or when asked for.
// Measured on a 2-core AVX-512 EPYC (README, "Speed"): OpenBLAS SkylakeX 166–203 GFLOP/s on
// one core and 308–346 on two (1024³), 1.2–1.7× Eigen's GEMM on the model's shapes.
// Debian's OpenBLAS left to itself picks Prescott kernels on some AVX-512 CPUs it does not
// know (about 30 GFLOP/s), and OPENBLAS_CORETYPE set in the environment for other programs
// may name a slower core: kvlab sets the core type itself while it loads the library and
// puts the variable back afterwards.
//
// Environment (read once):
//   KVLAB_GEMM=auto|openblas|eigen   auto (default) as above; openblas makes a failure to
//                                    load or verify OpenBLAS an error instead of a fallback
//   KVLAB_OPENBLAS_CORETYPE=NAME     the core type to ask OpenBLAS for instead of kvlab's
//                                    choice (OpenBLAS's names: SkylakeX, Haswell, Zen, ...)
//   KVLAB_OPENBLAS_LIB=PATH          the OpenBLAS library to load instead of Debian's
//                                    OpenMP build (it must be an OpenMP build)
#pragma once

#include "core/tensor.h"

#include <string>

namespace kvlab::gemm {

enum class Backend { eigen, openblas };

struct Info {
    Backend backend = Backend::eigen;
    std::string library;     // the OpenBLAS file loaded; empty with Eigen
    std::string requested;   // the core type kvlab asked OpenBLAS for
    std::string core;        // the core type OpenBLAS reports it runs
    std::string why;         // why this backend: the CPU features seen, or what failed
    std::string describe() const;   // one line for logs and benchmark headers
    std::string brief() const;      // "GEMM: OpenBLAS SkylakeX" or "GEMM: Eigen"
};

// Chooses and verifies the backend once (thread-safe); later calls return the same.
// Throws kvlab::Error only when KVLAB_GEMM is invalid, or is "openblas" and OpenBLAS
// cannot be loaded or fails its check. The first product calls it; the model's
// constructor does too, so that it runs before any parallel region and only in commands
// that compute (loading and checking OpenBLAS takes a few hundred ms of CPU time).
const Info& init();

// Throws kvlab::Error when KVLAB_GEMM holds a value other than auto, openblas or eigen
// (cheap: reads the variable only). kvlab's main calls it first.
void check_env();

// The CPU's best OpenBLAS core type for single-precision GEMM from its features, or ""
// when OpenBLAS should not be used ("SkylakeX", "Haswell").
std::string cpu_core_type();

enum Acc : bool { set = false, add = true };

// C = A·Bᵀ (or +=): activations × weightᵀ.   A [m, k], B [n, k], C [m, n]
void nt(RefT<float> C, CRefT<float> A, CRefT<float> B, Acc acc = set);
void nt(RefT<double> C, CRefT<double> A, CRefT<double> B, Acc acc = set);
// C = A·B (or +=).                           A [m, k], B [k, n], C [m, n]
void nn(RefT<float> C, CRefT<float> A, CRefT<float> B, Acc acc = set);
void nn(RefT<double> C, CRefT<double> A, CRefT<double> B, Acc acc = set);
// C = Aᵀ·B (or +=): weight gradients.        A [k, m], B [k, n], C [m, n]
void tn(RefT<float> C, CRefT<float> A, CRefT<float> B, Acc acc = set);
void tn(RefT<double> C, CRefT<double> A, CRefT<double> B, Acc acc = set);

// C = A·B always in Eigen's GEMM, whatever the backend: kvlab bench's comparison row.
void eigen_nn(RefT<float> C, CRefT<float> A, CRefT<float> B, Acc acc = set);

}  // namespace kvlab::gemm
