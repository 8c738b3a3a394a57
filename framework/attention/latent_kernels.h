// The two products of absorbed MLA decoding, for float with AVX-512 (F, DQ) or AVX2 with
// FMA: written out because at long contexts they are the whole cost of a decode step, and
// a general GEMM packs the cache (reads and writes a copy of it) before it multiplies, with
// only H = n_heads columns to amortise that over.
//
// The cache (cap tokens) is latent-major in tiles of kTile = 32 tokens: tile j holds tokens
// 32j..32j+31 as a [K, 32] row-major block (K = dc + dR latents: c_KV, then kR), tiles one
// after the other; the last tile is [K, cap − 32j] when cap is not a multiple of 32, so the
// cache is exactly cap · K floats. A tile's consecutive tokens of one latent are vector
// loads, and the scores read each tile front to back (a plain latent-major [K, max_T]
// layout made every latent row its own memory stream, 144 of them, and ran 2× slower at
// 4096 tokens).
//   scores  s[t, h] = Σ_k lat(k, t) · q[h, k]          for t in [a, b), all h   (q [H, K])
//   mix     õ[k, h] = Σ_{t0 ≤ t < t1} p[t, h] · lat(k, t)   for k in [ka, kb), all h
// s, p and õ are head-major: s(t, h) at s[h·ld_s + t] (a head's scores are contiguous, for
// its softmax), õ(k, h) at o[h·ld_o + k].
// Register blocking (L = 16 lanes with AVX-512, 8 with AVX2; 32 or 16 vector registers):
// scores keeps 2L tokens × HS heads in registers (HS = 8 or 6); per latent it loads 2
// vectors of the cache and broadcasts HS query values for 2·HS FMAs, with no horizontal
// sums. mix keeps KM latents × HM heads (3 × 8 or 2 × 6); per L tokens it loads KM cache
// vectors and HM probability vectors for KM·HM FMAs, and sums each register's lanes once
// at the end. Sums run in a fixed order for a given (a, b) or (t0, t1, ka, kb).
// available() is false without either: the functions are then plain loops, and callers
// use Eigen's products instead.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define KVLAB_LATENT_KERNELS 512
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KVLAB_LATENT_KERNELS 256
#else
#define KVLAB_LATENT_KERNELS 0
#endif

#include <algorithm>

namespace kvlab::latent {

constexpr bool available() { return KVLAB_LATENT_KERNELS != 0; }

// Tokens per tile of the cache layout (see the top of the file).
inline constexpr int kTile = 32;

// Where latent k of token t is, in a cache of cap tokens.
inline size_t latent_index(int K, int cap, int k, int t) {
    const int tile = t / kTile, width = std::min(kTile, cap - tile * kTile);
    return size_t(tile) * K * kTile + size_t(k) * width + t % kTile;
}
inline const float* latent_at(const float* lat, int K, int cap, int k, int t) {
    return lat + latent_index(K, cap, k, t);
}

#if KVLAB_LATENT_KERNELS

namespace detail {

#define KVLAB_ALWAYS_INLINE inline __attribute__((always_inline))

// The vector operations the kernels use, for the instruction set this file is built for.
#if KVLAB_LATENT_KERNELS == 512
struct Simd {
    using Reg = __m512;
    using Mask = __mmask16;
    static constexpr int kLanes = 16;
    static constexpr int kScoreHeads = 8, kMixLatents = 3, kMixHeads = 8;
    static KVLAB_ALWAYS_INLINE Mask tail(int left) {
        return left >= 16 ? Mask(0xFFFF) : left <= 0 ? Mask(0) : Mask((1u << left) - 1u);
    }
    static KVLAB_ALWAYS_INLINE Reg zero() { return _mm512_setzero_ps(); }
    static KVLAB_ALWAYS_INLINE Reg load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
    static KVLAB_ALWAYS_INLINE Reg load(const float* p) { return _mm512_loadu_ps(p); }
    static KVLAB_ALWAYS_INLINE void store(float* p, Mask m, Reg x) { _mm512_mask_storeu_ps(p, m, x); }
    static KVLAB_ALWAYS_INLINE Reg broadcast(float x) { return _mm512_set1_ps(x); }
    static KVLAB_ALWAYS_INLINE Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
    static KVLAB_ALWAYS_INLINE float sum(Reg x) { return _mm512_reduce_add_ps(x); }
};
#else
struct Simd {
    using Reg = __m256;
    using Mask = __m256i;
    static constexpr int kLanes = 8;
    static constexpr int kScoreHeads = 4, kMixLatents = 3, kMixHeads = 4;
    static KVLAB_ALWAYS_INLINE Mask tail(int left) {   // lanes i < left
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    static KVLAB_ALWAYS_INLINE Reg zero() { return _mm256_setzero_ps(); }
    static KVLAB_ALWAYS_INLINE Reg load(Mask m, const float* p) { return _mm256_maskload_ps(p, m); }
    static KVLAB_ALWAYS_INLINE Reg load(const float* p) { return _mm256_loadu_ps(p); }
    static KVLAB_ALWAYS_INLINE void store(float* p, Mask m, Reg x) { _mm256_maskstore_ps(p, m, x); }
    static KVLAB_ALWAYS_INLINE Reg broadcast(float x) { return _mm256_set1_ps(x); }
    static KVLAB_ALWAYS_INLINE Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
    static KVLAB_ALWAYS_INLINE float sum(Reg x) {
        const __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
        const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
        return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
    }
};
#endif

// Tokens per scores block: two vectors.
inline constexpr int kScoreTokens = 2 * Simd::kLanes;
static_assert(kTile % kScoreTokens == 0, "a scores block never crosses a tile");

// The accumulators stay in registers only when every loop over them is unrolled and
// nothing takes their address: hence the pragmas and always_inline (an out-of-line helper
// kept them in memory, 3× slower).
// Width of the tile holding token t: the stride between its latents.
KVLAB_ALWAYS_INLINE int tile_width(int cap, int t) { return std::min(kTile, cap - t / kTile * kTile); }

// Tokens [t0, t0 + len), len ≤ kScoreTokens, all inside one tile.
// Tokens [t0, t0 + len), len ≤ kScoreTokens, all inside one tile. FULL: len == TV lanes
// (plain loads; a masked load costs more on some CPUs).
template <int TV, int HB, bool FULL>
KVLAB_ALWAYS_INLINE void scores_block_impl(const float* lat, int K, int cap, const float* q, int ldq, int h0, int t0,
                                           int len, float* s, int ld_s) {
    using V = Simd;
    typename V::Reg acc[TV][HB];
    typename V::Mask m[TV];
#pragma GCC unroll 8
    for (int j = 0; j < TV; ++j) {
        m[j] = V::tail(len - V::kLanes * j);
#pragma GCC unroll 8
        for (int h = 0; h < HB; ++h) acc[j][h] = V::zero();
    }
    const float* qh[HB];
#pragma GCC unroll 8
    for (int h = 0; h < HB; ++h) qh[h] = q + (h0 + h) * ldq;
    const float* row = latent_at(lat, K, cap, 0, t0);   // the tile's rows follow each other
    const int w = tile_width(cap, t0);
    const size_t next = size_t(K) * kTile;   // the same latent of the next tile
    for (int k = 0; k < K; ++k, row += w) {
        // The next tile is fetched while this one is multiplied: left to the hardware
        // prefetcher, the scores ran at half the memory bandwidth the MHA decode reaches.
#pragma GCC unroll 2
        for (int i = 0; i < kScoreTokens; i += 16)
            _mm_prefetch(reinterpret_cast<const char*>(row + next + i), _MM_HINT_T0);
        typename V::Reg x[TV];
#pragma GCC unroll 8
        for (int j = 0; j < TV; ++j) {
            if constexpr (FULL) x[j] = V::load(row + V::kLanes * j);
            else x[j] = V::load(m[j], row + V::kLanes * j);
        }
#pragma GCC unroll 8
        for (int h = 0; h < HB; ++h) {
            const typename V::Reg b = V::broadcast(qh[h][k]);
#pragma GCC unroll 8
            for (int j = 0; j < TV; ++j) acc[j][h] = V::fma(x[j], b, acc[j][h]);
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < TV; ++j)
#pragma GCC unroll 8
        for (int h = 0; h < HB; ++h) V::store(s + (h0 + h) * ld_s + t0 + V::kLanes * j, m[j], acc[j][h]);
}

template <int TV, int HB>
KVLAB_ALWAYS_INLINE void scores_block(const float* lat, int K, int cap, const float* q, int ldq, int h0, int t0,
                                      int len, float* s, int ld_s) {
    if (len == TV * Simd::kLanes) scores_block_impl<TV, HB, true>(lat, K, cap, q, ldq, h0, t0, len, s, ld_s);
    else scores_block_impl<TV, HB, false>(lat, K, cap, q, ldq, h0, t0, len, s, ld_s);
}

template <int KB, int HB>
KVLAB_ALWAYS_INLINE void mix_block(const float* lat, int K, int cap, int t0, int t1, const float* p, int ld_p, int h0,
                                   int k0, float* o, int ld_o, bool accumulate) {
    using V = Simd;
    typename V::Reg acc[KB][HB];
#pragma GCC unroll 8
    for (int j = 0; j < KB; ++j)
#pragma GCC unroll 8
        for (int h = 0; h < HB; ++h) acc[j][h] = V::zero();
    for (int t = t0; t < t1;) {
        const int step = std::min({V::kLanes, t1 - t, kTile - t % kTile});   // never across a tile
        const typename V::Mask m = V::tail(step);
        const float* row = latent_at(lat, K, cap, k0, t);
        const int w = tile_width(cap, t);
        typename V::Reg x[KB];
        if (step == V::kLanes) {   // whole vectors: plain loads (a masked load costs more on some CPUs)
#pragma GCC unroll 8
            for (int j = 0; j < KB; ++j) x[j] = V::load(row + j * w);
#pragma GCC unroll 8
            for (int h = 0; h < HB; ++h) {
                const typename V::Reg ph = V::load(p + (h0 + h) * ld_p + t);
#pragma GCC unroll 8
                for (int j = 0; j < KB; ++j) acc[j][h] = V::fma(x[j], ph, acc[j][h]);
            }
        } else {
#pragma GCC unroll 8
            for (int j = 0; j < KB; ++j) x[j] = V::load(m, row + j * w);
#pragma GCC unroll 8
            for (int h = 0; h < HB; ++h) {
                const typename V::Reg ph = V::load(m, p + (h0 + h) * ld_p + t);
#pragma GCC unroll 8
                for (int j = 0; j < KB; ++j) acc[j][h] = V::fma(x[j], ph, acc[j][h]);
            }
        }
        t += step;
    }
#pragma GCC unroll 8
    for (int j = 0; j < KB; ++j)
#pragma GCC unroll 8
        for (int h = 0; h < HB; ++h) {
            float& out = o[(h0 + h) * ld_o + k0 + j];
            out = (accumulate ? out : 0.0f) + V::sum(acc[j][h]);
        }
}

// Calls BLOCK<FIRST, nh>(ARGS) for head blocks of NH (≤ 8) heads, then the remainder.
#define KVLAB_HEAD_BLOCKS(NH, BLOCK, FIRST, ...)                                                  \
    for (int h0 = 0; h0 < H; h0 += NH) {                                                          \
        switch (std::min(NH, H - h0)) {                                                           \
            case 1: BLOCK<FIRST, 1>(__VA_ARGS__); break;                                          \
            case 2: BLOCK<FIRST, 2>(__VA_ARGS__); break;                                          \
            case 3: BLOCK<FIRST, 3>(__VA_ARGS__); break;                                          \
            case 4: BLOCK<FIRST, 4>(__VA_ARGS__); break;                                          \
            case 5: BLOCK<FIRST, 5>(__VA_ARGS__); break;                                          \
            case 6: BLOCK<FIRST, (NH >= 6 ? 6 : 1)>(__VA_ARGS__); break;                          \
            case 7: BLOCK<FIRST, (NH >= 7 ? 7 : 1)>(__VA_ARGS__); break;                          \
            default: BLOCK<FIRST, (NH >= 8 ? 8 : 1)>(__VA_ARGS__); break;                         \
        }                                                                                         \
    }

template <int TV>
void scores_heads(const float* lat, int K, int cap, const float* q, int ldq, int H, int t0, int len, float* s,
                  int ld_s) {
    KVLAB_HEAD_BLOCKS(Simd::kScoreHeads, scores_block, TV, lat, K, cap, q, ldq, h0, t0, len, s, ld_s)
}

template <int KB>
void mix_heads(const float* lat, int K, int cap, int t0, int t1, const float* p, int ld_p, int H, int k0, float* o,
               int ld_o, bool accumulate) {
    KVLAB_HEAD_BLOCKS(Simd::kMixHeads, mix_block, KB, lat, K, cap, t0, t1, p, ld_p, h0, k0, o, ld_o, accumulate)
}

#undef KVLAB_HEAD_BLOCKS

}  // namespace detail

// s(t, h) for t in [a, b) (see the top of the file), 2L tokens × HS heads at a time.
inline void scores(const float* lat, int K, int cap, const float* q, int ldq, int H, int a, int b, float* s,
                   int ld_s) {
    constexpr int kLanes = detail::Simd::kLanes;
    for (int t = a; t < b;) {
        const int len = std::min({b - t, kTile - t % kTile, detail::kScoreTokens - t % detail::kScoreTokens});
        if (len > kLanes) detail::scores_heads<2>(lat, K, cap, q, ldq, H, t, len, s, ld_s);
        else detail::scores_heads<1>(lat, K, cap, q, ldq, H, t, len, s, ld_s);
        t += len;
    }
}

// õ(k, h) for k in [ka, kb) over tokens [t0, t1) (added to õ when accumulate), KM latents
// × HM heads at a time.
inline void mix(const float* lat, int K, int cap, int t0, int t1, const float* p, int ld_p, int H, int ka, int kb,
                float* o, int ld_o, bool accumulate = false) {
    constexpr int KM = detail::Simd::kMixLatents;
    int k = ka;
    for (; k + KM <= kb; k += KM) detail::mix_heads<KM>(lat, K, cap, t0, t1, p, ld_p, H, k, o, ld_o, accumulate);
    if (kb - k == 2) detail::mix_heads<2>(lat, K, cap, t0, t1, p, ld_p, H, k, o, ld_o, accumulate);
    else if (kb - k == 1) detail::mix_heads<1>(lat, K, cap, t0, t1, p, ld_p, H, k, o, ld_o, accumulate);
}

#else  // the same products in plain loops; callers use Eigen's products instead (available() is false)

inline void scores(const float* lat, int K, int cap, const float* q, int ldq, int H, int a, int b, float* s,
                   int ld_s) {
    for (int h = 0; h < H; ++h)
        for (int t = a; t < b; ++t) {
            float acc = 0;
            for (int k = 0; k < K; ++k) acc += *latent_at(lat, K, cap, k, t) * q[h * ldq + k];
            s[h * ld_s + t] = acc;
        }
}

inline void mix(const float* lat, int K, int cap, int t0, int t1, const float* p, int ld_p, int H, int ka, int kb,
                float* o, int ld_o, bool accumulate = false) {
    for (int h = 0; h < H; ++h)
        for (int k = ka; k < kb; ++k) {
            float acc = 0;
            for (int t = t0; t < t1; ++t) acc += p[h * ld_p + t] * *latent_at(lat, K, cap, k, t);
            o[h * ld_o + k] = (accumulate ? o[h * ld_o + k] : 0.0f) + acc;
        }
}

#endif  // KVLAB_LATENT_KERNELS

}  // namespace kvlab::latent
