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
// Kept for backward: the input x, rotated q and k, v (one [B·T, (H+2G)·dh] matrix qkv,
// column blocks q | k | v), the attention probabilities P [B, H, T, T] and the
// concatenated head outputs o.
// wq, wk, wv are consecutive in the model's arena (param_specs order), so they are one
// [(H+2G)·dh, D] matrix and the three projections are one GEMM, forward and backward; a
// plugin bound to separate tensors does the three products instead.
// KV cache per token per layer: 2·G·dh elements (K and V of the G kv heads).
#include "attention/attention.h"
#include "attention/rope.h"
#include "attention/sdpa.h"
#include "config/experiment_config.h"
#include "model/ops.h"

#include <fmt/format.h>
#include <omp.h>

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
        : name_(std::move(name)), D_(c.d_model), H_(c.n_heads), G_(G), dh_(c.head_dim) {
        if (G_ < 1 || H_ % G_ != 0)
            throw ConfigError("model.n_kv_heads",
                              fmt::format("n_heads ({}) must be divisible by n_kv_heads ({})", H_, G_));
        if (dh_ % 2 != 0)
            throw ConfigError("model.head_dim", fmt::format("must be even for RoPE, got {}", dh_));
        rope_ = Rope<S>(dh_, c.rope_theta);   // after the checks: Rope's own is an internal one
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
        const int64_t nq = int64_t(H_) * dh_ * D_, nk = int64_t(G_) * dh_ * D_;
        fused_ = w_["wk"] == w_["wq"] + nq && w_["wv"] == w_["wk"] + nk && dw_["wk"] == dw_["wq"] + nq &&
                 dw_["wv"] == dw_["wk"] + nk;
    }

    void forward(int B, int T, CRef x, Ref out) override {
        resize(B, T);
        rope_.ensure(T);
        const int H = H_, G = G_, dh = dh_, rep = H_ / G_;
        // 1. projections: [q | k | v] = x [wq; wk; wv]ᵀ
        x_ = x;                                                       // [B*T, D]
        if (fused_) {
            gemm::nt(qkv_, x, W("wq", (H + 2 * G) * dh, D_));   // [B*T, (H+2G)*dh]
        } else {
            gemm::nt(qkv_.leftCols(H * dh), x, W("wq", H * dh, D_));
            gemm::nt(qkv_.middleCols(H * dh, G * dh), x, W("wk", G * dh, D_));
            gemm::nt(qkv_.rightCols(G * dh), x, W("wv", G * dh, D_));
        }
        // 2. RoPE over the whole head width of the H query and G key heads (adjacent columns)
        rope_.apply_rows(qkv_, T, 0, H + G);
        // 3-5. scores, softmax, weighted sum, per (sequence, head)
        const S scale = S(1) / std::sqrt(S(dh));
        const int kc = H * dh, vc = (H + G) * dh;                     // first columns of k and v
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < B; ++b)
            for (int i = 0; i < H; ++i) {
                const int j = i / rep;
                sdpa_forward<S>(qkv_.block(b * T, i * dh, T, dh), qkv_.block(b * T, kc + j * dh, T, dh),
                                qkv_.block(b * T, vc + j * dh, T, dh), scale, probs(b, i),
                                o_.block(b * T, i * dh, T, dh));
            }
        // 6. output projection
        gemm::nt(out, o_, W("wo", D_, H * dh));         // [B*T, D]
    }

    void backward(CRef dout, Ref dx) override {
        const int B = B_, T = T_, H = H_, G = G_, dh = dh_, rep = H_ / G_;
        // 6. out = o woᵀ
        gemm::tn(dW("wo", D_, H * dh), dout, o_, gemm::add);     // [D, H*dh]
        gemm::nn(do_, dout, W("wo", D_, H * dh));                   // [B*T, H*dh]
        // 3-5. o_i = softmax(q_i k_jᵀ · scale) v_j; heads sharing kv head j accumulate
        // into dk_j, dv_j, so the parallel loop runs over (sequence, kv head).
        const S scale = S(1) / std::sqrt(S(dh));
        const int kc = H * dh, vc = (H + G) * dh;
        dqkv_.rightCols(2 * G * dh).setZero();                        // dk, dv are accumulated
        ensure_scratch();
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < B; ++b)
            for (int j = 0; j < G; ++j) {
                auto dP = dP_.middleRows(static_cast<Eigen::Index>(omp_get_thread_num()) * kSdpaBlock, kSdpaBlock);
                for (int i = j * rep; i < (j + 1) * rep; ++i)
                    sdpa_backward<S>(qkv_.block(b * T, i * dh, T, dh), qkv_.block(b * T, kc + j * dh, T, dh),
                                     qkv_.block(b * T, vc + j * dh, T, dh), probs(b, i),
                                     do_.block(b * T, i * dh, T, dh), scale, dP, dqkv_.block(b * T, i * dh, T, dh),
                                     dqkv_.block(b * T, kc + j * dh, T, dh), dqkv_.block(b * T, vc + j * dh, T, dh));
            }
        // 2. RoPE is a rotation: its backward is the inverse rotation
        rope_.apply_rows(dqkv_, T, 0, H + G, /*inverse=*/true);
        // 1. [q | k | v] = x [wq; wk; wv]ᵀ
        if (fused_) {
            ops::add_weight_grad<S>(dqkv_, x_, dW("wq", (H + 2 * G) * dh, D_), wgrad_);
            gemm::nn(dx, dqkv_, W("wq", (H + 2 * G) * dh, D_));
        } else {
            gemm::tn(dW("wq", H * dh, D_), dqkv_.leftCols(H * dh), x_, gemm::add);
            gemm::tn(dW("wk", G * dh, D_), dqkv_.middleCols(H * dh, G * dh), x_, gemm::add);
            gemm::tn(dW("wv", G * dh, D_), dqkv_.rightCols(G * dh), x_, gemm::add);
            gemm::nn(dx, dqkv_.leftCols(H * dh), W("wq", H * dh, D_));
            gemm::nn(dx, dqkv_.middleCols(H * dh, G * dh), W("wk", G * dh, D_), gemm::add);
            gemm::nn(dx, dqkv_.rightCols(G * dh), W("wv", G * dh, D_), gemm::add);
        }
    }

    int64_t activation_bytes() const override {
        int64_t n = 0;
        for (const Mat* m : {&x_, &qkv_, &o_, &do_, &dqkv_, &P_, &dP_}) n += m->size();
        n += wgrad_.size();
        return n * static_cast<int64_t>(sizeof(S));
    }

    int64_t kv_elements_per_token() const override { return 2LL * G_ * dh_; }

    // Head-major: K and V hold, for each KV head j, its max_T rows [j·max_T, (j+1)·max_T),
    // so a head's cached keys and values are contiguous.
    struct Cache final : DecodeCache {
        Mat K, V;                 // [G*max_T, dh]: the cached state
        Mat q, k, v, p, o;        // per-step scratch (not counted); p [H, max_T]: a row per head
        Rope<S> rope;             // cos/sin tables for positions 0..max_T-1 (the forward's values)
        int64_t bytes() const override { return static_cast<int64_t>((K.size() + V.size()) * sizeof(S)); }
    };

    std::unique_ptr<DecodeCache> new_decode_cache(int max_T, std::string_view impl) const override {
        if (!impl.empty() && impl != "default")
            throw Error(fmt::format("attention '{}' has no decode implementation '{}' (available: default)", name_, impl));
        auto c = std::make_unique<Cache>();
        c->max_T = max_T;
        c->K.resize(static_cast<Eigen::Index>(G_) * max_T, dh_);
        c->V.resize(static_cast<Eigen::Index>(G_) * max_T, dh_);
        c->q.resize(1, H_ * dh_);
        c->k.resize(1, G_ * dh_);
        c->v.resize(1, G_ * dh_);
        c->p.resize(H_, max_T);
        c->o.resize(1, H_ * dh_);
        c->rope = rope_;
        c->rope.ensure(max_T);
        return c;
    }

    // One token at position t: its q, k, v (matrix-vector products, their rows split across
    // threads in one region),
    // then every query head attends over its KV head's t + 1 cached rows; with more than
    // one thread and enough cached rows, the heads are shared out between the threads.
    void decode_step(DecodeCache& base, CRef x, Ref out) const override {
        auto& c = static_cast<Cache&>(base);
        KV_CHECK(c.length < c.max_T, "decode cache full ({} tokens)", c.max_T);
        const int t = c.length, H = H_, G = G_, dh = dh_, rep = H_ / G_;
        const Eigen::Index maxT = c.max_T;
        ops::matvecs_t<S>(x, {{W("wq", H * dh, D_), c.q.data()}, {W("wk", G * dh, D_), c.k.data()},
                              {W("wv", G * dh, D_), c.v.data()}});
        c.rope.apply(c.q.data(), H, t);
        c.rope.apply(c.k.data(), G, t);
        for (int j = 0; j < G; ++j) {
            c.K.row(j * maxT + t) = c.k.middleCols(j * dh, dh);
            c.V.row(j * maxT + t) = c.v.middleCols(j * dh, dh);
        }
        const S scale = S(1) / std::sqrt(S(dh));
        const bool parallel = static_cast<int64_t>(t + 1) * dh * H >= ops::kParallelMatvec;
#pragma omp parallel for schedule(static) if (parallel)
        for (int i = 0; i < H; ++i) {
            const Eigen::Index j0 = static_cast<Eigen::Index>(i / rep) * maxT;
            sdpa_decode<S>(c.q.middleCols(i * dh, dh), c.K.middleRows(j0, t + 1), c.V.middleRows(j0, t + 1), scale,
                           c.p.block(i, 0, 1, t + 1), c.o.middleCols(i * dh, dh));
        }
        ops::matvec_t(c.o, W("wo", D_, H * dh), out);
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
        qkv_.resize(BT, (H_ + 2 * G_) * dh_);
        o_.resize(BT, H_ * dh_);
        do_.resize(BT, H_ * dh_);
        dqkv_.resize(BT, (H_ + 2 * G_) * dh_);
        P_.resize(static_cast<Eigen::Index>(B) * H_ * T, T);       // [B, H, T, T]
        dP_.resize(0, 0);
        ensure_scratch();
        if (fused_) wgrad_.resize((H_ + 2 * G_) * dh_, D_);
    }
    // dP: one block of rows per thread, [threads * kSdpaBlock, T]
    void ensure_scratch() {
        const Eigen::Index rows = static_cast<Eigen::Index>(omp_get_max_threads()) * kSdpaBlock;
        if (dP_.rows() < rows || dP_.cols() != T_) dP_.resize(rows, T_);
    }

    std::string name_;
    int D_, H_, G_, dh_;
    Rope<S> rope_;
    std::map<std::string, S*> w_, dw_;
    bool fused_ = false;          // wq, wk, wv consecutive (in the arenas, and their gradients)
    int B_ = 0, T_ = 0;
    Mat x_;                       // [B*T, D]
    Mat qkv_, dqkv_;              // [B*T, (H+2G)*dh]  rotated q | rotated k | v, and the gradient
    Mat o_, do_;                  // [B*T, H*dh]
    Mat P_;                       // [B*H*T, T]
    Mat dP_;                      // [threads*kSdpaBlock, T] backward scratch
    ops::ColMatT<S> wgrad_;       // [(H+2G)*dh, D] scratch of ops::add_weight_grad
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
