// The two products of absorbed MLA decoding, for float with AVX-512 (F, DQ): written out
// because at long contexts they are the whole cost of a decode step, and a general GEMM
// packs the cache (reads and writes a copy of it) before it multiplies, with only
// H = n_heads columns to amortise that over.
//
// The cache is latent-major: LT [K, ld] row-major holds token t in column t (K = dc + dR
// rows: c_KV, then kR), so 16 consecutive tokens are one vector load.
//   scores  s[t, h] = Σ_k LT[k, t] · q[h, k]         for t in [a, b), all h   (q [H, K])
//   mix     õ[k, h] = Σ_{t < n} p[t, h] · LT[k, t]    for k in [ka, kb), all h
// s, p and õ are head-major: s(t, h) at s[h·ld_s + t] (a head's scores are contiguous, for
// its softmax), õ(k, h) at o[h·ld_o + k].
// Register blocking: scores keeps 32 tokens × 8 heads in 16 registers; per latent row it
// loads 2 vectors of the cache and broadcasts 8 query values for 16 FMAs, with no
// horizontal sums. mix keeps 3 latents × 8 heads in 24 registers; per 16 tokens it loads 3
// cache vectors and 8 probability vectors for 24 FMAs, and sums each register's lanes once
// at the end. Sums run in a fixed order for a given (a, b) or (ka, kb).
// available() is false without AVX-512: the functions are then plain loops, and callers
// use Eigen's products instead.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define KVLAB_LATENT_KERNELS 1
#else
#define KVLAB_LATENT_KERNELS 0
#endif

#include <algorithm>

namespace kvlab::latent {

constexpr bool available() { return KVLAB_LATENT_KERNELS != 0; }

#if KVLAB_LATENT_KERNELS

namespace detail {

#define KVLAB_ALWAYS_INLINE inline __attribute__((always_inline))

inline __mmask16 tail_mask(int left) {
    return left >= 16 ? __mmask16(0xFFFF) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1u);
}

// The accumulators stay in registers only when every loop over them is unrolled and
// nothing takes their address: hence the pragmas and always_inline (an out-of-line helper
// kept them in memory, 3× slower).
template <int TV, int HB>
KVLAB_ALWAYS_INLINE void scores_block(const float* LT, int ld, int K, const float* q, int ldq, int h0, int t0, int tend,
                                      float* s, int ld_s) {
    __m512 acc[TV][HB];
    __mmask16 m[TV];
#pragma GCC unroll 8
    for (int j = 0; j < TV; ++j) {
        m[j] = tail_mask(tend - (t0 + 16 * j));
#pragma GCC unroll 8
        for (int h = 0; h < HB; ++h) acc[j][h] = _mm512_setzero_ps();
    }
    const float* qh[HB];
#pragma GCC unroll 8
    for (int h = 0; h < HB; ++h) qh[h] = q + (h0 + h) * ldq;
    for (int k = 0; k < K; ++k) {
        __m512 x[TV];
#pragma GCC unroll 8
        for (int j = 0; j < TV; ++j) x[j] = _mm512_maskz_loadu_ps(m[j], LT + k * ld + t0 + 16 * j);
#pragma GCC unroll 8
        for (int h = 0; h < HB; ++h) {
            const __m512 w = _mm512_set1_ps(qh[h][k]);
#pragma GCC unroll 8
            for (int j = 0; j < TV; ++j) acc[j][h] = _mm512_fmadd_ps(x[j], w, acc[j][h]);
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < TV; ++j)
#pragma GCC unroll 8
        for (int h = 0; h < HB; ++h) _mm512_mask_storeu_ps(s + (h0 + h) * ld_s + t0 + 16 * j, m[j], acc[j][h]);
}

template <int KB, int HB>
KVLAB_ALWAYS_INLINE void mix_block(const float* LT, int ld, int n, const float* p, int ld_p, int h0, int k0, float* o,
                                   int ld_o) {
    __m512 acc[KB][HB];
#pragma GCC unroll 8
    for (int j = 0; j < KB; ++j)
#pragma GCC unroll 8
        for (int h = 0; h < HB; ++h) acc[j][h] = _mm512_setzero_ps();
    for (int t = 0; t < n; t += 16) {
        const __mmask16 m = tail_mask(n - t);
        __m512 x[KB];
#pragma GCC unroll 8
        for (int j = 0; j < KB; ++j) x[j] = _mm512_maskz_loadu_ps(m, LT + (k0 + j) * ld + t);
#pragma GCC unroll 8
        for (int h = 0; h < HB; ++h) {
            const __m512 w = _mm512_maskz_loadu_ps(m, p + (h0 + h) * ld_p + t);
#pragma GCC unroll 8
            for (int j = 0; j < KB; ++j) acc[j][h] = _mm512_fmadd_ps(x[j], w, acc[j][h]);
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < KB; ++j)
#pragma GCC unroll 8
        for (int h = 0; h < HB; ++h) o[(h0 + h) * ld_o + k0 + j] = _mm512_reduce_add_ps(acc[j][h]);
}

// Calls BLOCK<.., nh>(ARGS) for the head counts nh = 8, 8, ..., then the remainder.
#define KVLAB_HEAD_BLOCKS(BLOCK, FIRST, ...)                                                      \
    for (int h0 = 0; h0 < H; h0 += 8) {                                                           \
        switch (std::min(8, H - h0)) {                                                            \
            case 1: BLOCK<FIRST, 1>(__VA_ARGS__); break;                                          \
            case 2: BLOCK<FIRST, 2>(__VA_ARGS__); break;                                          \
            case 3: BLOCK<FIRST, 3>(__VA_ARGS__); break;                                          \
            case 4: BLOCK<FIRST, 4>(__VA_ARGS__); break;                                          \
            case 5: BLOCK<FIRST, 5>(__VA_ARGS__); break;                                          \
            case 6: BLOCK<FIRST, 6>(__VA_ARGS__); break;                                          \
            case 7: BLOCK<FIRST, 7>(__VA_ARGS__); break;                                          \
            default: BLOCK<FIRST, 8>(__VA_ARGS__); break;                                         \
        }                                                                                         \
    }

template <int TV>
void scores_heads(const float* LT, int ld, int K, const float* q, int ldq, int H, int t0, int tend, float* s,
                  int ld_s) {
    KVLAB_HEAD_BLOCKS(scores_block, TV, LT, ld, K, q, ldq, h0, t0, tend, s, ld_s)
}

template <int KB>
void mix_heads(const float* LT, int ld, int n, const float* p, int ld_p, int H, int k0, float* o, int ld_o) {
    KVLAB_HEAD_BLOCKS(mix_block, KB, LT, ld, n, p, ld_p, h0, k0, o, ld_o)
}

#undef KVLAB_HEAD_BLOCKS

}  // namespace detail

// s(t, h) for t in [a, b) (see the top of the file), 32 tokens × 8 heads at a time.
inline void scores(const float* LT, int ld, int K, const float* q, int ldq, int H, int a, int b, float* s, int ld_s) {
    int t = a;
    for (; t + 32 <= b; t += 32) detail::scores_heads<2>(LT, ld, K, q, ldq, H, t, t + 32, s, ld_s);
    if (b - t > 16) detail::scores_heads<2>(LT, ld, K, q, ldq, H, t, b, s, ld_s);
    else if (b > t) detail::scores_heads<1>(LT, ld, K, q, ldq, H, t, b, s, ld_s);
}

// õ(k, h) for k in [ka, kb) over the first n cached tokens, 3 latents × 8 heads at a time.
inline void mix(const float* LT, int ld, int n, const float* p, int ld_p, int H, int ka, int kb, float* o, int ld_o) {
    int k = ka;
    for (; k + 3 <= kb; k += 3) detail::mix_heads<3>(LT, ld, n, p, ld_p, H, k, o, ld_o);
    if (kb - k == 2) detail::mix_heads<2>(LT, ld, n, p, ld_p, H, k, o, ld_o);
    else if (kb - k == 1) detail::mix_heads<1>(LT, ld, n, p, ld_p, H, k, o, ld_o);
}

#else  // the same products in plain loops; callers use Eigen's products instead (available() is false)

inline void scores(const float* LT, int ld, int K, const float* q, int ldq, int H, int a, int b, float* s, int ld_s) {
    for (int h = 0; h < H; ++h)
        for (int t = a; t < b; ++t) {
            float acc = 0;
            for (int k = 0; k < K; ++k) acc += LT[k * ld + t] * q[h * ldq + k];
            s[h * ld_s + t] = acc;
        }
}

inline void mix(const float* LT, int ld, int n, const float* p, int ld_p, int H, int ka, int kb, float* o, int ld_o) {
    for (int h = 0; h < H; ++h)
        for (int k = ka; k < kb; ++k) {
            float acc = 0;
            for (int t = 0; t < n; ++t) acc += p[h * ld_p + t] * LT[k * ld + t];
            o[h * ld_o + k] = acc;
        }
}

#endif  // KVLAB_LATENT_KERNELS

}  // namespace kvlab::latent
