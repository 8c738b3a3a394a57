// MHA, GQA and MQA: one class, parameterised by the number of K/V heads G.
//   Vaswani et al. 2017 (arXiv 1706.03762); MQA: Shazeer 2019 (arXiv 1911.02150);
//   GQA: Ainslie et al. 2023 (arXiv 2305.13245).
//
// model.md:
//   q_i = RoPE(x wqᵀ)[i]                 heads i in 0..H-1, width dh   (wq [H·dh, D])
//   k_j = RoPE(x wkᵀ)[j], v_j = (x wvᵀ)[j]  kv heads j in 0..G-1       (wk, wv [G·dh, D])
//   head i uses kv head j = floor(i / (H/G))
//   o_i = softmax(q_i k_jᵀ / sqrt(dh) + causal mask) v_j
//   out = concat_i(o_i) woᵀ                                           (wo [D, H·dh])
//
// Symbols: D = d_model, H = n_heads, G = n_kv_heads, dh = head_dim, B×T rows.
// Kept for backward: the input x, rotated q and k, v, the attention probabilities P
// [B, H, T, T] and the concatenated head outputs o.
// KV cache per token per layer: 2·G·dh elements (K and V of the G kv heads).
#include "attention/attention.h"
#include "attention/rope.h"
#include "attention/sdpa.h"
#include "config/experiment_config.h"

#include <fmt/format.h>

#include <cmath>

namespace kvlab {
namespace {

template <class S>
class MhaFamily final : public Attention<S> {
public:
    using typename Attention<S>::Mat;
    using typename Attention<S>::Ref;
    using typename Attention<S>::CRef;

    MhaFamily(std::string name, const ModelConfig& c, int G)
        : name_(std::move(name)), D_(c.d_model), H_(c.n_heads), G_(G), dh_(c.head_dim), rope_(c.head_dim, c.rope_theta) {
        if (G_ < 1 || H_ % G_ != 0)
            throw ConfigError("model.n_kv_heads",
                              fmt::format("n_heads ({}) must be divisible by n_kv_heads ({})", H_, G_));
        if (dh_ % 2 != 0)
            throw ConfigError("model.head_dim", fmt::format("must be even for RoPE, got {}", dh_));
    }

    std::string_view name() const override { return name_; }

    std::vector<ParamSpec> param_specs() const override {
        return {{"wq", {H_ * dh_, D_}}, {"wk", {G_ * dh_, D_}}, {"wv", {G_ * dh_, D_}}, {"wo", {D_, H_ * dh_}}};
    }
    std::vector<std::pair<std::string, double>> hyper_params() const override { return {{"n_kv_heads", G_}}; }

    void bind(const ParamViews<S>& p, const ParamViews<S>& g) override {
        for (auto& spec : param_specs()) {
            w_[spec.name] = p.get(spec.name, spec.shape);
            dw_[spec.name] = g.get(spec.name, spec.shape);
        }
    }

    void forward(int B, int T, CRef x, Ref out) override {
        resize(B, T);
        rope_.ensure(T);
        const int H = H_, G = G_, dh = dh_, rep = H_ / G_;
        // 1. projections
        x_ = x;                                                       // [B*T, D]
        q_.noalias() = x * W("wq", H * dh, D_).transpose();           // [B*T, H*dh]
        k_.noalias() = x * W("wk", G * dh, D_).transpose();           // [B*T, G*dh]
        v_.noalias() = x * W("wv", G * dh, D_).transpose();           // [B*T, G*dh]
        // 2. RoPE over the whole head width
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
        out.noalias() = o_ * W("wo", D_, H * dh).transpose();         // [B*T, D]
    }

    void backward(CRef dout, Ref dx) override {
        const int B = B_, T = T_, H = H_, G = G_, dh = dh_, rep = H_ / G_;
        // 6. out = o woᵀ
        dW("wo", D_, H * dh).noalias() += dout.transpose() * o_;     // [D, H*dh]
        do_.noalias() = dout * W("wo", D_, H * dh);                   // [B*T, H*dh]
        // 3-5. o_i = softmax(q_i k_jᵀ · scale) v_j; heads sharing kv head j accumulate
        // into dk_j, dv_j, so the parallel loop runs over (sequence, kv head).
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
        // 2. RoPE is a rotation: its backward is the inverse rotation
        rope_.apply_rows(dq_, T, 0, H, /*inverse=*/true);
        rope_.apply_rows(dk_, T, 0, G, /*inverse=*/true);
        // 1. q = x wqᵀ, k = x wkᵀ, v = x wvᵀ
        dW("wq", H * dh, D_).noalias() += dq_.transpose() * x_;
        dW("wk", G * dh, D_).noalias() += dk_.transpose() * x_;
        dW("wv", G * dh, D_).noalias() += dv_.transpose() * x_;
        dx.noalias() = dq_ * W("wq", H * dh, D_);
        dx.noalias() += dk_ * W("wk", G * dh, D_);
        dx.noalias() += dv_ * W("wv", G * dh, D_);
    }

    int64_t kv_elements_per_token() const override { return 2LL * G_ * dh_; }

    struct Cache final : DecodeCache {
        Mat K, V;                 // [max_T, G*dh]: the cached state
        Mat q, k, v, p, o;        // per-step scratch (not counted)
        int64_t bytes() const override { return static_cast<int64_t>((K.size() + V.size()) * sizeof(S)); }
    };

    std::unique_ptr<DecodeCache> new_decode_cache(int max_T, std::string_view impl) const override {
        if (!impl.empty() && impl != "default")
            throw Error(fmt::format("attention '{}' has no decode implementation '{}' (available: default)", name_, impl));
        auto c = std::make_unique<Cache>();
        c->max_T = max_T;
        c->K.resize(max_T, G_ * dh_);
        c->V.resize(max_T, G_ * dh_);
        c->q.resize(1, H_ * dh_);
        c->k.resize(1, G_ * dh_);
        c->v.resize(1, G_ * dh_);
        c->p.resize(1, max_T);
        c->o.resize(1, H_ * dh_);
        return c;
    }

    void decode_step(DecodeCache& base, CRef x, Ref out) const override {
        auto& c = static_cast<Cache&>(base);
        KV_CHECK(c.length < c.max_T, "decode cache full ({} tokens)", c.max_T);
        const int t = c.length, H = H_, G = G_, dh = dh_, rep = H_ / G_;
        c.q.noalias() = x * W("wq", H * dh, D_).transpose();
        c.k.noalias() = x * W("wk", G * dh, D_).transpose();
        c.v.noalias() = x * W("wv", G * dh, D_).transpose();
        rope_.apply(c.q.data(), H, t);
        rope_.apply(c.k.data(), G, t);
        c.K.row(t) = c.k.row(0);
        c.V.row(t) = c.v.row(0);
        const S scale = S(1) / std::sqrt(S(dh));
        for (int i = 0; i < H; ++i) {
            const int j = i / rep;
            sdpa_decode<S>(c.q.middleCols(i * dh, dh), c.K.block(0, j * dh, t + 1, dh), c.V.block(0, j * dh, t + 1, dh),
                           scale, c.p.leftCols(t + 1), c.o.middleCols(i * dh, dh));
        }
        out.noalias() = c.o * W("wo", D_, H * dh).transpose();
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
        q_.resize(BT, H_ * dh_);
        k_.resize(BT, G_ * dh_);
        v_.resize(BT, G_ * dh_);
        o_.resize(BT, H_ * dh_);
        do_.resize(BT, H_ * dh_);
        dq_.resize(BT, H_ * dh_);
        dk_.resize(BT, G_ * dh_);
        dv_.resize(BT, G_ * dh_);
        P_.resize(static_cast<Eigen::Index>(B) * H_ * T, T);       // [B, H, T, T]
        dP_.resize(static_cast<Eigen::Index>(B) * G_ * T, T);      // one scratch per (b, kv head)
    }

    std::string name_;
    int D_, H_, G_, dh_;
    Rope<S> rope_;
    std::map<std::string, S*> w_, dw_;
    int B_ = 0, T_ = 0;
    Mat x_, q_, k_, v_, o_, do_, dq_, dk_, dv_, P_, dP_;
};

}  // namespace

template <class S>
std::unique_ptr<Attention<S>> make_mha(const ModelConfig& c) {
    // mha implies n_kv_heads = n_heads; a value in the file belongs to other plugins of a sweep.
    return std::make_unique<MhaFamily<S>>("mha", c, c.n_heads);
}

template <class S>
std::unique_ptr<Attention<S>> make_gqa(const ModelConfig& c) {
    if (!c.has("n_kv_heads"))
        throw ConfigError("model.n_kv_heads", "gqa needs n_kv_heads (a divisor of n_heads)");
    const auto G = c.plugin_int("n_kv_heads");
    if (G < 1 || G > c.n_heads)
        throw ConfigError("model.n_kv_heads", fmt::format("must be in 1..n_heads ({}), got {}", c.n_heads, G));
    return std::make_unique<MhaFamily<S>>("gqa", c, static_cast<int>(G));
}

template <class S>
std::unique_ptr<Attention<S>> make_mqa(const ModelConfig& c) {
    // mqa implies n_kv_heads = 1, whatever the file says for other plugins of a sweep.
    return std::make_unique<MhaFamily<S>>("mqa", c, 1);
}

template std::unique_ptr<Attention<float>> make_mha<float>(const ModelConfig&);
template std::unique_ptr<Attention<double>> make_mha<double>(const ModelConfig&);
template std::unique_ptr<Attention<float>> make_gqa<float>(const ModelConfig&);
template std::unique_ptr<Attention<double>> make_gqa<double>(const ModelConfig&);
template std::unique_ptr<Attention<float>> make_mqa<float>(const ModelConfig&);
template std::unique_ptr<Attention<double>> make_mqa<double>(const ModelConfig&);

}  // namespace kvlab
