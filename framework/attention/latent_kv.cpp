// latent_kv: MHA/GQA whose keys and values are decompressed from one shared r-wide latent,
// the only thing cached. It is what a trained MHA/GQA layer becomes when [wk; wv] is
// factored at rank r (post-hoc KV compression, lowrank/compress.h; docs/lowrank.md), and
// it trains from scratch like any other plugin.
//   Low-rank joint K/V compression as in DeepSeek-V2's MLA (arXiv 2405.04434, 2.1.2) but
//   without MLA's decoupled RoPE key and latent RMSNorm: RoPE rotates the decompressed keys,
//   so an MHA layer maps onto this one exactly at full rank. Post-hoc factorisation of
//   pretrained K/V projections: Palu (arXiv 2407.21118), SVD-LLM (arXiv 2403.07378).
//
// Math (model.md's notation, row vectors, y = x Wᵀ):
//   c   = x w_dkvᵀ                        [r]      w_dkv [r, D]      the cached latent
//   k_j = RoPE(c w_ukᵀ)[j]                [G·dh]   w_uk  [G·dh, r]   kv heads j in 0..G-1
//   v_j = (c w_uvᵀ)[j]                    [G·dh]   w_uv  [G·dh, r]
//   q_i = RoPE(x wqᵀ)[i]                  [H·dh]   wq    [H·dh, D]   heads i in 0..H-1
//   head i uses kv head j = floor(i / (H/G))
//   o_i = softmax(q_i k_jᵀ / sqrt(dh) + causal mask) v_j
//   out = concat_i(o_i) woᵀ                        wo    [D, H·dh]
// With r ≥ 2·G·dh and w_dkv = [wk; wv], w_uk = [I 0], w_uv = [0 I] this is exactly the MHA
// family layer with the same wq, wk, wv, wo; RoPE sits after the up-projection, so the
// positional rotation is exact for any r.
//
// Symbols: D = d_model, H = n_heads, G = n_kv_heads (default H; H % G == 0),
//   dh = head_dim (even: RoPE covers the whole head), r = latent_rank, B×T rows.
//   Head i owns rows i·dh .. (i+1)·dh − 1 of wq; kv head j rows j·dh .. of w_uk, w_uv.
// Kept for backward: x, the latent c, rotated q and k, v, the probabilities P [B, H, T, T]
// and the concatenated head outputs o.
// KV cache per token per layer: r elements (c only), against 2·G·dh for the MHA family.
// Decode cannot absorb w_uk into the query as MLA does, because the rotation of cached
// token s sits between c_s w_ukᵀ and the dot product with q (q·RoPE_s(u) ≠ RoPE(q)·u for
// s ≠ t); so each step decompresses the cached keys chunk by chunk into scratch (cost
// t·r·G·dh per step). The value side is absorbed: o_i = p_i V_j = (p_i C) w_uv,jᵀ.
#include "attention/attention.h"
#include "attention/rope.h"
#include "attention/sdpa.h"
#include "config/experiment_config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace kvlab {
namespace {

template <class S>
class LatentKv final : public Attention<S> {
public:
    using typename Attention<S>::Mat;
    using typename Attention<S>::Ref;
    using typename Attention<S>::CRef;

    LatentKv(const ModelConfig& c, int r, int G)
        : D_(c.d_model), H_(c.n_heads), G_(G), dh_(c.head_dim), r_(r), rope_theta_(c.rope_theta),
          rope_(c.head_dim, c.rope_theta) {}

    std::string_view name() const override { return "latent_kv"; }

    std::vector<ParamSpec> param_specs() const override {
        return {{"wq", {H_ * dh_, D_}},
                {"w_dkv", {r_, D_}},
                {"w_uk", {G_ * dh_, r_}},
                {"w_uv", {G_ * dh_, r_}},
                {"wo", {D_, H_ * dh_}}};
    }
    std::vector<std::pair<std::string, double>> hyper_params() const override {
        return {{"latent_rank", r_}, {"n_kv_heads", G_}};
    }

    void bind(const ParamViews<S>& p, const ParamViews<S>& g) override {
        for (auto& spec : param_specs()) {
            w_[spec.name] = p.get(spec.name, spec.shape);
            dw_[spec.name] = g.get(spec.name, spec.shape);
        }
    }

    void forward(int B, int T, CRef x, Ref out) override {
        resize(B, T);
        rope_.ensure(T);
        const int H = H_, G = G_, dh = dh_, r = r_, rep = H_ / G_;
        // 1. projections: the latent and its up-projections, and the queries
        x_ = x;                                                       // [B*T, D]
        gemm::nt(c_, x, W("w_dkv", r, D_));             // [B*T, r]
        gemm::nt(k_, c_, W("w_uk", G * dh, r));         // [B*T, G*dh]
        gemm::nt(v_, c_, W("w_uv", G * dh, r));         // [B*T, G*dh]
        gemm::nt(q_, x, W("wq", H * dh, D_));           // [B*T, H*dh]
        // 2. RoPE over the whole head width, after the up-projection
        rope_.apply_rows(q_, T, 0, H);
        rope_.apply_rows(k_, T, 0, G);
        // 3-5. scores, softmax, weighted sum, per (sequence, head)
        const S scale = S(1) / std::sqrt(S(dh));
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < B; ++b)
            for (int i = 0; i < H; ++i) {
                const int j = i / rep;
                sdpa_forward<S>(q_.block(b * T, i * dh, T, dh), k_.block(b * T, j * dh, T, dh),
                                v_.block(b * T, j * dh, T, dh), scale, probs(b, i), o_.block(b * T, i * dh, T, dh));
            }
        // 6. output projection
        gemm::nt(out, o_, W("wo", D_, H * dh));         // [B*T, D]
    }

    void backward(CRef dout, Ref dx) override {
        KV_CHECK(B_ > 0, "latent_kv backward called before forward");
        const int B = B_, T = T_, H = H_, G = G_, dh = dh_, r = r_, rep = H_ / G_;
        // 6. out = o woᵀ
        gemm::tn(dW("wo", D_, H * dh), dout, o_, gemm::add);     // [D, H*dh]
        gemm::nn(do_, dout, W("wo", D_, H * dh));                   // [B*T, H*dh]
        // 3-5. o_i = softmax(q_i k_jᵀ · scale + mask) v_j; heads sharing kv head j accumulate
        //      into dk_j, dv_j, so the parallel loop runs over (sequence, kv head).
        const S scale = S(1) / std::sqrt(S(dh));
        dk_.setZero();
        dv_.setZero();
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < B; ++b)
            for (int j = 0; j < G; ++j) {
                auto dP = dP_.block(static_cast<Eigen::Index>(b * G + j) * T, 0, T, T);
                for (int i = j * rep; i < (j + 1) * rep; ++i)
                    sdpa_backward<S>(q_.block(b * T, i * dh, T, dh), k_.block(b * T, j * dh, T, dh),
                                     v_.block(b * T, j * dh, T, dh), probs(b, i), do_.block(b * T, i * dh, T, dh),
                                     scale, dP, dq_.block(b * T, i * dh, T, dh), dk_.block(b * T, j * dh, T, dh),
                                     dv_.block(b * T, j * dh, T, dh));
            }
        // 2. q = RoPE(·), k = RoPE(·): a rotation, so the backward is the inverse rotation
        rope_.apply_rows(dq_, T, 0, H, /*inverse=*/true);
        rope_.apply_rows(dk_, T, 0, G, /*inverse=*/true);       // dk_ is now d(c w_ukᵀ)
        // 1. projections, in reverse.
        // q = x wqᵀ
        gemm::tn(dW("wq", H * dh, D_), dq_, x_, gemm::add);       // [H*dh, D]
        gemm::nn(dx, dq_, W("wq", H * dh, D_));                     // [B*T, D]
        // k = c w_ukᵀ,  v = c w_uvᵀ
        gemm::tn(dW("w_uk", G * dh, r), dk_, c_, gemm::add);      // [G*dh, r]
        gemm::tn(dW("w_uv", G * dh, r), dv_, c_, gemm::add);      // [G*dh, r]
        gemm::nn(dc_, dk_, W("w_uk", G * dh, r));                   // [B*T, r]
        gemm::nn(dc_, dv_, W("w_uv", G * dh, r), gemm::add);
        // c = x w_dkvᵀ
        gemm::tn(dW("w_dkv", r, D_), dc_, x_, gemm::add);         // [r, D]
        gemm::nn(dx, dc_, W("w_dkv", r, D_), gemm::add);
    }

    int64_t kv_elements_per_token() const override { return r_; }

    // Counted: the latents C of the cached tokens, nothing else.
    struct Cache final : DecodeCache {
        Mat C;             // [max_T, r]   c of tokens 0..length-1  (counted)
        // Per-step scratch, not counted in bytes():
        Mat q;             // [1, H*dh]    this token's rotated queries
        Mat kc;            // [kChunk, G*dh] keys of one chunk of cached tokens, decompressed and rotated
        Mat s;             // [H, max_T]   scores, then probabilities
        Mat oc;            // [H, r]       p_i C
        Mat o;             // [1, H*dh]    concat_i(o_i)
        Rope<S> rope;      // cos/sin tables for positions 0..max_T-1 (the forward's values)
        int64_t bytes() const override { return static_cast<int64_t>(C.size() * sizeof(S)); }
    };
    static constexpr int kChunk = 64;

    std::unique_ptr<DecodeCache> new_decode_cache(int max_T, std::string_view impl) const override {
        if (!impl.empty() && impl != "default")
            throw Error(
                fmt::format("attention 'latent_kv' has no decode implementation '{}' (available: default)", impl));
        KV_CHECK(max_T > 0, "decode cache needs max_T > 0, got {}", max_T);
        auto c = std::make_unique<Cache>();
        c->max_T = max_T;
        c->C.resize(max_T, r_);
        c->q.resize(1, H_ * dh_);
        c->kc.resize(std::min(kChunk, max_T), G_ * dh_);
        c->s.resize(H_, max_T);
        c->oc.resize(H_, r_);
        c->o.resize(1, H_ * dh_);
        c->rope = Rope<S>(dh_, rope_theta_);
        c->rope.ensure(max_T);
        return c;
    }

    // One token at position t = cache.length; the cache holds only C.
    //   k_{j,s} = RoPE_s(c_s w_uk,jᵀ) is recomputed for s = 0..t, kChunk tokens at a time:
    //   w_uk cannot be absorbed into q because RoPE_s depends on the cached token's position.
    //   o_i = Σ_s p_{i,s} c_s w_uv,jᵀ = (p_i C) w_uv,jᵀ: w_uv is absorbed on the output side.
    void decode_step(DecodeCache& base, CRef x, Ref out) const override {
        auto& c = static_cast<Cache&>(base);
        KV_CHECK(c.length < c.max_T, "decode cache full ({} tokens)", c.max_T);
        const int t = c.length, n = t + 1, H = H_, G = G_, dh = dh_, r = r_, rep = H_ / G_;
        const S scale = S(1) / std::sqrt(S(dh));
        // 1. projections of this token; its latent is appended to the cache
        c.C.row(t).noalias() = x * W("w_dkv", r, D_).transpose();    // [1, r]
        c.q.noalias() = x * W("wq", H * dh, D_).transpose();          // [1, H*dh]
        // 2. RoPE of the queries at position t
        c.rope.apply(c.q.data(), H, t);
        // 3. scores s_{i,s} = q_i · k_{j,s} · scale over chunks of cached tokens
        for (int s0 = 0; s0 < n; s0 += kChunk) {
            const int len = std::min(kChunk, n - s0);
            auto kc = c.kc.topRows(len);                              // [len, G*dh]
            kc.noalias() = c.C.middleRows(s0, len) * W("w_uk", G * dh, r).transpose();
            for (int s = 0; s < len; ++s) c.rope.apply(&kc(s, 0), G, s0 + s);
            for (int j = 0; j < G; ++j) {
                // the rep query heads of kv head j are contiguous in q: [rep, dh]
                const Eigen::Map<const Mat> qj(c.q.data() + static_cast<Eigen::Index>(j) * rep * dh, rep, dh);
                c.s.block(j * rep, s0, rep, len).noalias() = qj * kc.middleCols(j * dh, dh).transpose();
            }
        }
        // 4. softmax over s = 0..t, per head, with the row max subtracted
        auto P = c.s.leftCols(n);                                     // [H, n]
        for (int i = 0; i < H; ++i) {
            S mx = -std::numeric_limits<S>::infinity();
            for (int s = 0; s < n; ++s) mx = std::max(mx, P(i, s) * scale);
            S sum = 0;
            for (int s = 0; s < n; ++s) sum += (P(i, s) = std::exp(P(i, s) * scale - mx));
            P.row(i) /= sum;
        }
        // 5. o_i = (p_i C) w_uv,jᵀ   ([1, n]·[n, r] = [1, r], then [1, r]·[r, dh])
        c.oc.noalias() = P * c.C.topRows(n);                          // [H, r]
        const auto w_uv = W("w_uv", G * dh, r);                       // [G*dh, r]
        for (int i = 0; i < H; ++i)
            c.o.middleCols(i * dh, dh).noalias() = c.oc.row(i) * w_uv.middleRows((i / rep) * dh, dh).transpose();
        // 6. output projection
        out.noalias() = c.o * W("wo", D_, H * dh).transpose();        // [1, D]
        ++c.length;
    }

private:
    CMapT<S> W(const char* n, Eigen::Index r, Eigen::Index c) const { return CMapT<S>(w_.at(n), r, c); }
    MapT<S> dW(const char* n, Eigen::Index r, Eigen::Index c) { return MapT<S>(dw_.at(n), r, c); }
    auto probs(int b, int i) { return P_.block(static_cast<Eigen::Index>(b * H_ + i) * T_, 0, T_, T_); }

    void resize(int B, int T) {
        if (B == B_ && T == T_) return;
        B_ = B;
        T_ = T;
        const Eigen::Index BT = static_cast<Eigen::Index>(B) * T;
        x_.resize(BT, D_);
        c_.resize(BT, r_);
        dc_.resize(BT, r_);
        q_.resize(BT, H_ * dh_);
        dq_.resize(BT, H_ * dh_);
        k_.resize(BT, G_ * dh_);
        dk_.resize(BT, G_ * dh_);
        v_.resize(BT, G_ * dh_);
        dv_.resize(BT, G_ * dh_);
        o_.resize(BT, H_ * dh_);
        do_.resize(BT, H_ * dh_);
        P_.resize(static_cast<Eigen::Index>(B) * H_ * T, T);       // [B, H, T, T]
        dP_.resize(static_cast<Eigen::Index>(B) * G_ * T, T);      // one scratch per (b, kv head)
    }

    int D_, H_, G_, dh_, r_;
    double rope_theta_;
    Rope<S> rope_;
    std::map<std::string, S*> w_, dw_;
    int B_ = 0, T_ = 0;
    Mat x_;                       // [B*T, D]
    Mat c_, dc_;                  // [B*T, r]
    Mat q_, dq_, o_, do_;         // [B*T, H*dh]
    Mat k_, dk_, v_, dv_;         // [B*T, G*dh]
    Mat P_, dP_;                  // [B*H*T, T], [B*G*T, T]
};

}  // namespace

template <class S>
std::unique_ptr<Attention<S>> make_latent_kv(const ModelConfig& c) {
    if (!c.has("latent_rank"))
        throw ConfigError("model.latent_rank",
                          "latent_kv needs latent_rank (the width r of the cached K/V latent, > 0)");
    const int64_t r = c.plugin_int("latent_rank");
    if (r < 1) throw ConfigError("model.latent_rank", fmt::format("must be > 0, got {}", r));
    // n_kv_heads is shared with gqa; absent, every query head has its own K/V head (as mha).
    const int64_t G = c.plugin_int("n_kv_heads", c.n_heads);
    if (G < 1 || G > c.n_heads || c.n_heads % G != 0)
        throw ConfigError("model.n_kv_heads",
                          fmt::format("n_heads ({}) must be divisible by n_kv_heads ({})", c.n_heads, G));
    if (c.head_dim < 2 || c.head_dim % 2 != 0)
        throw ConfigError("model.head_dim", fmt::format("must be even for RoPE, got {}", c.head_dim));
    return std::make_unique<LatentKv<S>>(c, static_cast<int>(r), static_cast<int>(G));
}

template std::unique_ptr<Attention<float>> make_latent_kv<float>(const ModelConfig&);
template std::unique_ptr<Attention<double>> make_latent_kv<double>(const ModelConfig&);

}  // namespace kvlab
