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
// s, p and õ are head-major and start at the range's first token: s(t, h) at
// s[h·ld_s + t − a] (a head's scores are contiguous, for its softmax), p(t, h) at
// p[h·ld_p + t − t0], õ(k, h) at o[h·ld_o + k].
//   attend  one thread's share of the whole attention over tokens [a, b): the two products
//           and an online softmax between them (below).
// Register blocking (L = 16 lanes with AVX-512, 8 with AVX2; 32 or 16 vector registers):
// scores keeps 2L tokens × HS heads in registers (HS = 8 or 4); per latent it loads 2
// vectors of the cache and broadcasts HS query values for 2·HS FMAs, with no horizontal
// sums. mix keeps KM latents × HM heads (3 × 8 or 3 × 4); per L tokens it loads KM cache
// vectors and HM probability vectors for KM·HM FMAs, and sums each register's lanes once
// at the end. Sums run in a fixed order for a given (a, b) or (t0, t1, ka, kb).
// With AVX2 and more than 4 heads, attend puts the heads in the lanes instead (namespace
// lanes below): the head-major blocking leaves half of AVX2's FMA throughput unused.
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

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

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

// Tokens [t0, t0 + len), len ≤ kScoreTokens, all inside one tile, into s (token t0's
// column). FULL: len == TV lanes (plain loads; a masked load costs more on some CPUs).
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
        for (int h = 0; h < HB; ++h) V::store(s + (h0 + h) * ld_s + V::kLanes * j, m[j], acc[j][h]);
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
                const typename V::Reg ph = V::load(p + (h0 + h) * ld_p + (t - t0));
#pragma GCC unroll 8
                for (int j = 0; j < KB; ++j) acc[j][h] = V::fma(x[j], ph, acc[j][h]);
            }
        } else {
#pragma GCC unroll 8
            for (int j = 0; j < KB; ++j) x[j] = V::load(m, row + j * w);
#pragma GCC unroll 8
            for (int h = 0; h < HB; ++h) {
                const typename V::Reg ph = V::load(m, p + (h0 + h) * ld_p + (t - t0));
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

#if KVLAB_LATENT_KERNELS == 256
// attend with AVX2 and more than 4 heads: the heads in the vector lanes. The query
// vectors are transposed to qT [K, Hp] (Hp = H rounded up to 8, the extra heads' queries
// 0), the scores and probabilities are token-major, s(t, ·) one vector of Hp heads, and
// the unnormalised õ(k, ·) too. Then
//   scores  s(t, ·) = Σ_k lat(k, t) · qT(k, ·): TB tokens at a time, per latent one load
//           of qT(k, ·) and TB broadcasts of the cache for TB FMAs (TB = 12, 12, 8 per tile);
//   mix     õ(k, ·) += Σ_t lat(k, t) · p(t, ·): KB latents at a time, per token one load of
//           p(t, ·) and KB broadcasts for KB FMAs (KB = 12);
// with no horizontal sums, and the softmax's running max, sum and rescaling are vector
// operations over the heads. 1.6-1.7× the head-major kernels at 8 heads on a Zen 3 core
// (scores 60-70 against 38-41 GFLOP/s, mix 49-64 against 29-39, one core, 512-4096 tokens).
namespace lanes {

inline constexpr int kLanes = 8;
inline constexpr int kChunk = 256;   // tokens per chunk: K · 256 floats, 144 KiB at K = 144, stay in L2
inline int padded(int H) { return (H + kLanes - 1) / kLanes * kLanes; }

// s(t, ·) for tokens row[0..TB) of one tile (row: latent 0 of the first token, w: the
// tile's width). With prefetch, each latent row of the next tile is fetched while this one
// is multiplied (the next tile starts K · kTile floats further on): left to the hardware
// prefetcher, a cache that is not in L3 is read at a fraction of the memory bandwidth.
template <int TB, bool PREFETCH = false>
KVLAB_ALWAYS_INLINE void scores_block(const float* row, int K, int w, const float* qT, int Hp, float* s) {
    const size_t next = size_t(K) * kTile;
    for (int g = 0; g < Hp; g += kLanes) {
        __m256 acc[TB];
#pragma GCC unroll 16
        for (int t = 0; t < TB; ++t) acc[t] = _mm256_setzero_ps();
        const float* r = row;
        for (int k = 0; k < K; ++k, r += w) {
            if (PREFETCH && g == 0) {
                _mm_prefetch(reinterpret_cast<const char*>(r + next), _MM_HINT_T0);
                _mm_prefetch(reinterpret_cast<const char*>(r + next + 16), _MM_HINT_T0);
            }
            const __m256 qv = _mm256_loadu_ps(qT + size_t(k) * Hp + g);
#pragma GCC unroll 16
            for (int t = 0; t < TB; ++t) acc[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(r + t), qv, acc[t]);
        }
#pragma GCC unroll 16
        for (int t = 0; t < TB; ++t) _mm256_storeu_ps(s + size_t(t) * Hp + g, acc[t]);
    }
}

// õ(k0 + j, ·) += Σ_t lat(k0 + j, t) p(t, ·) for j < KB over len tokens of one tile (row:
// latent k0 of the first token)
template <int KB>
KVLAB_ALWAYS_INLINE void mix_block(const float* row, int w, int len, const float* p, int Hp, float* o) {
    for (int g = 0; g < Hp; g += kLanes) {
        __m256 acc[KB];
#pragma GCC unroll 16
        for (int j = 0; j < KB; ++j) acc[j] = _mm256_loadu_ps(o + size_t(j) * Hp + g);
        for (int t = 0; t < len; ++t) {
            const __m256 pv = _mm256_loadu_ps(p + size_t(t) * Hp + g);
#pragma GCC unroll 16
            for (int j = 0; j < KB; ++j) acc[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(row + j * w + t), pv, acc[j]);
        }
#pragma GCC unroll 16
        for (int j = 0; j < KB; ++j) _mm256_storeu_ps(o + size_t(j) * Hp + g, acc[j]);
    }
}

// A whole tile's first block fetches the next tile (a tile of 32 tokens is 128 bytes per
// latent: two lines).
inline void scores_tile(const float* row, int K, int w, int len, const float* qT, int Hp, float* s) {
    int t = 0;
    if (len == kTile) scores_block<12, true>(row, K, w, qT, Hp, s), t = 12;
    for (; t + 12 <= len; t += 12) scores_block<12>(row + t, K, w, qT, Hp, s + size_t(t) * Hp);
    if (t + 8 <= len) scores_block<8>(row + t, K, w, qT, Hp, s + size_t(t) * Hp), t += 8;
    for (; t + 4 <= len; t += 4) scores_block<4>(row + t, K, w, qT, Hp, s + size_t(t) * Hp);
    for (; t < len; ++t) scores_block<1>(row + t, K, w, qT, Hp, s + size_t(t) * Hp);
}

inline void mix_tile(const float* row, int w, int len, int dc, const float* p, int Hp, float* o) {
    int k = 0;
    for (; k + 12 <= dc; k += 12) mix_block<12>(row + size_t(k) * w, w, len, p, Hp, o + size_t(k) * Hp);
    if (k + 8 <= dc) mix_block<8>(row + size_t(k) * w, w, len, p, Hp, o + size_t(k) * Hp), k += 8;
    for (; k + 4 <= dc; k += 4) mix_block<4>(row + size_t(k) * w, w, len, p, Hp, o + size_t(k) * Hp);
    for (; k < dc; ++k) mix_block<1>(row + size_t(k) * w, w, len, p, Hp, o + size_t(k) * Hp);
}

inline size_t scratch(int H, int K, int dc) { return size_t(K + kChunk + dc + 3) * padded(H); }

inline void attend(const float* lat, int K, int dc, int cap, const float* q, int H, int a, int b, float scale,
                   float* scratch, float* o, float* m, float* l) {
    const int Hp = padded(H);
    float* qT = scratch;                      // [K, Hp]
    float* s = qT + size_t(K) * Hp;           // [kChunk, Hp]
    float* oL = s + size_t(kChunk) * Hp;      // [dc, Hp]
    float* mL = oL + size_t(dc) * Hp;         // [Hp] running max, then
    float* lL = mL + Hp;                      // [Hp] running sum of exp, and
    float* mx = lL + Hp;                      // [Hp] the chunk's new max
    for (int k = 0; k < K; ++k)
        for (int h = 0; h < Hp; ++h) qT[size_t(k) * Hp + h] = h < H ? q[size_t(h) * K + k] : 0.0f;
    std::fill(oL, oL + size_t(dc) * Hp, 0.0f);
    std::fill(mL, mL + Hp, -std::numeric_limits<float>::infinity());
    std::fill(lL, lL + Hp, 0.0f);
    using Vec = Eigen::Array<float, Eigen::Dynamic, 1>;
    Eigen::Map<Vec> M(mL, Hp), L(lL, Hp), MX(mx, Hp);
    Eigen::Map<Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> O(oL, dc, Hp);
    // a tile's part of the chunk: tokens [t, t + len), its first latent and its width
    const auto each_tile = [&](int c0, int c1, auto&& f) {
        for (int t = c0; t < c1;) {
            const int len = std::min(kTile - t % kTile, c1 - t);
            f(latent_at(lat, K, cap, 0, t), tile_width(cap, t), len, t - c0);
            t += len;
        }
    };
    for (int c0 = a; c0 < b; c0 += kChunk) {
        const int c1 = std::min(b, c0 + kChunk);
        each_tile(c0, c1, [&](const float* row, int w, int len, int i) {
            scores_tile(row, K, w, len, qT, Hp, s + size_t(i) * Hp);
        });
        const int n = c1 - c0;
        // the new max, s·scale − max, then exp over the chunk as one array (Eigen's vector exp)
        const __m256 sc = _mm256_set1_ps(scale);
        for (int g = 0; g < Hp; g += kLanes) {
            __m256 mv = _mm256_loadu_ps(mL + g);
            for (int i = 0; i < n; ++i) mv = _mm256_max_ps(mv, _mm256_mul_ps(_mm256_loadu_ps(s + size_t(i) * Hp + g), sc));
            _mm256_storeu_ps(mx + g, mv);
            for (int i = 0; i < n; ++i) {
                float* si = s + size_t(i) * Hp + g;
                _mm256_storeu_ps(si, _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(si), sc), mv));
            }
        }
        Eigen::Map<Vec> E(s, size_t(n) * Hp);
        E = E.exp();
        M = (M - MX).exp();                   // the rescaling of what came before: 0 on the first chunk
        L *= M;
        for (int g = 0; g < Hp; g += kLanes) {
            __m256 lv = _mm256_loadu_ps(lL + g);
            for (int i = 0; i < n; ++i) lv = _mm256_add_ps(lv, _mm256_loadu_ps(s + size_t(i) * Hp + g));
            _mm256_storeu_ps(lL + g, lv);
        }
        O.rowwise() *= M.transpose();
        M = MX;
        each_tile(c0, c1, [&](const float* row, int w, int len, int i) {
            mix_tile(row, w, len, dc, s + size_t(i) * Hp, Hp, oL);
        });
    }
    for (int h = 0; h < H; ++h) {
        for (int k = 0; k < dc; ++k) o[size_t(h) * dc + k] = oL[size_t(k) * Hp + h];
        m[h] = mL[h];
        l[h] = lL[h];
    }
}

}  // namespace lanes
#endif

}  // namespace detail

// s(t, h) for t in [a, b) (see the top of the file), 2L tokens × HS heads at a time.
inline void scores(const float* lat, int K, int cap, const float* q, int ldq, int H, int a, int b, float* s,
                   int ld_s) {
    constexpr int kLanes = detail::Simd::kLanes;
    for (int t = a; t < b;) {
        const int len = std::min({b - t, kTile - t % kTile, detail::kScoreTokens - t % detail::kScoreTokens});
        if (len > kLanes) detail::scores_heads<2>(lat, K, cap, q, ldq, H, t, len, s + (t - a), ld_s);
        else detail::scores_heads<1>(lat, K, cap, q, ldq, H, t, len, s + (t - a), ld_s);
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
            s[h * ld_s + t - a] = acc;
        }
}

inline void mix(const float* lat, int K, int cap, int t0, int t1, const float* p, int ld_p, int H, int ka, int kb,
                float* o, int ld_o, bool accumulate = false) {
    for (int h = 0; h < H; ++h)
        for (int k = ka; k < kb; ++k) {
            float acc = 0;
            for (int t = t0; t < t1; ++t) acc += p[h * ld_p + t - t0] * *latent_at(lat, K, cap, k, t);
            o[h * ld_o + k] = (accumulate ? o[h * ld_o + k] : 0.0f) + acc;
        }
}

#endif  // KVLAB_LATENT_KERNELS

// Tokens per chunk of attend's head-major path: the chunk's latents (K · 512 floats,
// 288 KiB at K = 144) are read from memory by the scores and again, from L2, by the mix.
inline constexpr int kChunk = 512;

namespace detail {
#if KVLAB_LATENT_KERNELS == 256
inline bool heads_in_lanes(int H) { return H > lanes::kLanes / 2; }
#else
inline bool heads_in_lanes(int) { return false; }
#endif
}  // namespace detail

// The floats of scratch attend needs.
inline size_t attend_scratch(int H, int K, int dc) {
#if KVLAB_LATENT_KERNELS == 256
    if (detail::heads_in_lanes(H)) return detail::lanes::scratch(H, K, dc);
#endif
    (void)K, (void)dc;
    return size_t(H) * kChunk;
}

// One thread's share of absorbed attention: tokens [a, b) of the cache, all H heads, with
// an online softmax. q [H, K] (row h: head h's query over the latents); for each head h,
//   m[h] = max_t s(t, h) · scale,  l[h] = Σ_t exp(s(t, h) · scale − m[h]),
//   o[h·dc + k] = Σ_t exp(s(t, h) · scale − m[h]) · lat(k, t)    for k < dc
// (the unnormalised õ; o / l is softmax then p · C_KV). The cache is read in chunks, each
// once from memory: scores, the softmax update (the max so far m, the sum l and õ rescaled
// by exp(m_old − m_new) when the max grows), then the mix from cache. An empty range gives
// m = −inf, l = 0, o = 0. Sums run in a fixed order for a given (a, b).
inline void attend(const float* lat, int K, int dc, int cap, const float* q, int H, int a, int b, float scale,
                   float* scratch, float* o, float* m, float* l) {
#if KVLAB_LATENT_KERNELS == 256
    if (detail::heads_in_lanes(H)) return detail::lanes::attend(lat, K, dc, cap, q, H, a, b, scale, scratch, o, m, l);
#endif
    float* s = scratch;   // [H, kChunk] head-major
    std::fill(o, o + size_t(H) * dc, 0.0f);
    std::fill(m, m + H, -std::numeric_limits<float>::infinity());
    std::fill(l, l + H, 0.0f);
    for (int c0 = a; c0 < b; c0 += kChunk) {
        const int c1 = std::min(b, c0 + kChunk), len = c1 - c0;
        scores(lat, K, cap, q, K, H, c0, c1, s, kChunk);
        for (int h = 0; h < H; ++h) {
            Eigen::Map<Eigen::Array<float, Eigen::Dynamic, 1>> sv(s + size_t(h) * kChunk, len);
            const float mx = std::max(m[h], sv.maxCoeff() * scale);
            sv = (sv * scale - mx).exp();
            const float f = std::exp(m[h] - mx);   // 0 on the first chunk
            l[h] = l[h] * f + sv.sum();
            Eigen::Map<Eigen::Array<float, Eigen::Dynamic, 1>>(o + size_t(h) * dc, dc) *= f;
            m[h] = mx;
        }
        mix(lat, K, cap, c0, c1, s, kChunk, H, 0, dc, o, dc, true);
    }
}

}  // namespace kvlab::latent
