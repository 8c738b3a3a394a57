// MLA: multi-head latent attention with decoupled RoPE.
//   DeepSeek-AI, "DeepSeek-V2" (arXiv 2405.04434), section 2.1: 2.1.2 low-rank key-value
//   joint compression, 2.1.3 decoupled rotary position embedding. The RMSNorms on the
//   latents c_Q and c_KV are not in the paper's equations; they are in the released model
//   code and in model.md, which this file follows to the letter.
//
// model.md:
//   if q_lora_rank > 0:
//     c_Q = RMSNorm(x w_dqᵀ; q_norm)        [dcp]     w_dq [dcp, D], q_norm [dcp]
//     qC  = c_Q w_uqᵀ                        [H·dh]    w_uq [H·dh, dcp]
//     qR  = RoPE_per_head(c_Q w_qrᵀ)         [H·dR]    w_qr [H·dR, dcp]
//   else:
//     qC  = x wqᵀ                                      wq   [H·dh, D]
//     qR  = RoPE_per_head(x w_qrᵀ)                     w_qr [H·dR, D]
//   c_KV = RMSNorm(x w_dkvᵀ; kv_norm)        [dc]      w_dkv [dc, D], kv_norm [dc]
//   kC   = c_KV w_ukᵀ                        [H·dh]    w_uk [H·dh, dc]
//   v    = c_KV w_uvᵀ                        [H·dh]    w_uv [H·dh, dc]
//   kR   = RoPE(x w_krᵀ)                     [dR]      w_kr [dR, D], one key shared by all heads
//   q_i  = [qC_i, qR_i],  k_i = [kC_i, kR]   width dh + dR
//   o_i  = softmax(q_i k_iᵀ / sqrt(dh + dR) + causal mask) v_i
//   out  = concat_i(o_i) woᵀ                           wo [D, H·dh]
//   RMSNorm(x; g) = x / sqrt(mean(x²) + norm_eps) ⊙ g; RoPE is half-split (rope.h).
//
// Symbols: D = d_model, H = n_heads, dh = head_dim, dc = kv_lora_rank,
//   dcp = d_c' = q_lora_rank (0 = no query compression), dR = qk_rope_head_dim,
//   dk = dh + dR (per-head query/key width), B×T rows (row b*T + t is position t).
//   Head i owns rows i·dh .. (i+1)·dh − 1 of w_uq, wq, w_uk, w_uv (and i·dR .. of w_qr).
//   dh need not be even: RoPE only covers the dR columns.
//
// Kept for backward: x; the normalised latents before the gain (ĉ_Q, ĉ_KV) with their
// per-row 1/rms, and the latents c_Q, c_KV; the per-head concatenated q_i and k_i
// (qcat_, kcat_ [B·T, H·dk], RoPE applied); v; the probabilities P [B, H, T, T]; the
// concatenated head outputs o.
// KV cache per token per layer: dc + dR elements (c_KV and the shared kR) — against
// 2·H·dh for MHA. At decode time w_uk is absorbed into the query side and w_uv into the
// output side, so per-head keys and values of past tokens are never formed.
#include "attention/attention.h"
#include "attention/rope.h"
#include "attention/latent_kernels.h"
#include "attention/sdpa.h"
#include "config/experiment_config.h"
#include "model/ops.h"

#include <fmt/format.h>
#include <omp.h>

#include <cmath>
#include <limits>

namespace kvlab {
namespace {

// y = RMSNorm(x; g) row by row. `xh` holds x on entry and x̂ = x · rstd on exit; rstd [rows].
template <class S>
void rmsnorm_forward(RefT<S> xh, const S* g, S eps, S* rstd, RefT<S> y) {
    const Eigen::Index n = xh.cols();
    const Eigen::Map<const RowVecT<S>> gain(g, n);
#pragma omp parallel for schedule(static) if (xh.rows() > 16)
    for (Eigen::Index r = 0; r < xh.rows(); ++r) {
        const S rs = S(1) / std::sqrt(xh.row(r).squaredNorm() / S(n) + eps);
        rstd[r] = rs;
        xh.row(r) *= rs;
        y.row(r) = xh.row(r).cwiseProduct(gain);
    }
}

// Backward of y = x̂ ⊙ g, x̂ = x · rstd. `d` holds dy on entry and dx on exit; dg is
// accumulated. With dx̂ = dy ⊙ g:  dx = rstd · (dx̂ − x̂ · mean(dx̂ ⊙ x̂)).
template <class S>
void rmsnorm_backward(RefT<S> d, CRefT<S> xh, const S* rstd, const S* g, S* dg) {
    const Eigen::Index n = d.cols();
    const Eigen::Map<const RowVecT<S>> gain(g, n);
    // y = x̂ ⊙ g: dg += Σ_rows dy ⊙ x̂ (column sums, rows in order: no dependence on threads)
    Eigen::Map<RowVecT<S>>(dg, n) += (d.array() * xh.array()).colwise().sum().matrix();
    // x̂ = x · rstd(x)
#pragma omp parallel for schedule(static) if (d.rows() > 16)
    for (Eigen::Index r = 0; r < d.rows(); ++r) {
        d.row(r) = d.row(r).cwiseProduct(gain);                                 // dx̂
        const S m = d.row(r).dot(xh.row(r)) / S(n);
        d.row(r) = rstd[r] * (d.row(r) - m * xh.row(r));
    }
}

template <class S>
class Mla final : public Attention<S> {
public:
    using typename Attention<S>::Mat;
    using typename Attention<S>::Ref;
    using typename Attention<S>::CRef;

    explicit Mla(const ModelConfig& c)
        : D_(c.d_model), H_(c.n_heads), dh_(c.head_dim), eps_(static_cast<S>(c.norm_eps)) {
        if (!c.has("kv_lora_rank"))
            throw ConfigError("model.kv_lora_rank",
                              "mla needs kv_lora_rank (the width d_c of the cached K/V latent, > 0)");
        if (!c.has("qk_rope_head_dim"))
            throw ConfigError("model.qk_rope_head_dim",
                              "mla needs qk_rope_head_dim (the decoupled RoPE width d_R, even, > 0)");
        const int64_t dc = c.plugin_int("kv_lora_rank"), dcp = c.plugin_int("q_lora_rank", 0),
                      dR = c.plugin_int("qk_rope_head_dim");
        if (dc < 1) throw ConfigError("model.kv_lora_rank", fmt::format("must be > 0, got {}", dc));
        if (dcp < 0)
            throw ConfigError("model.q_lora_rank", fmt::format("must be >= 0 (0 = no query compression), got {}", dcp));
        if (dR < 1 || dR % 2 != 0)
            throw ConfigError("model.qk_rope_head_dim",
                              fmt::format("must be even and > 0 (RoPE rotates pairs), got {}", dR));
        if (H_ < 1 || dh_ < 1 || D_ < 1)
            throw ConfigError("model.n_heads",
                              fmt::format("mla needs n_heads, head_dim, d_model > 0, got {}, {}, {}", H_, dh_, D_));
        dc_ = static_cast<int>(dc);
        dcp_ = static_cast<int>(dcp);
        dR_ = static_cast<int>(dR);
        rope_ = Rope<S>(dR_, c.rope_theta);
        // The one list of parameters: model.md's names, shapes and order.
        const int64_t H = H_, dh = dh_, D = D_;
        if (dcp_ > 0) {
            add(w_dq_, "w_dq", {dcp, D});
            add(q_norm_, "q_norm", {dcp});
            add(w_uq_, "w_uq", {H * dh, dcp});
            add(w_qr_, "w_qr", {H * dR, dcp});
        } else {
            add(wq_, "wq", {H * dh, D});
            add(w_qr_, "w_qr", {H * dR, D});
        }
        add(w_dkv_, "w_dkv", {dc, D});
        add(kv_norm_, "kv_norm", {dc});
        add(w_uk_, "w_uk", {H * dh, dc});
        add(w_uv_, "w_uv", {H * dh, dc});
        add(w_kr_, "w_kr", {dR, D});
        add(wo_, "wo", {D, H * dh});
    }
    Mla(const Mla&) = delete;   // order_ points into *this
    Mla& operator=(const Mla&) = delete;

    std::string_view name() const override { return "mla"; }

    std::vector<ParamSpec> param_specs() const override {
        std::vector<ParamSpec> specs;
        for (const Param* p : order_) specs.push_back({p->name, p->shape});
        return specs;
    }
    std::vector<std::pair<std::string, double>> hyper_params() const override {
        return {{"kv_lora_rank", dc_}, {"q_lora_rank", dcp_}, {"qk_rope_head_dim", dR_}};
    }

    void bind(const ParamViews<S>& p, const ParamViews<S>& g) override {
        for (Param* t : order_) {
            t->w = p.get(t->name, t->shape);
            t->g = g.get(t->name, t->shape);
        }
    }

    void forward(int B, int T, CRef x, Ref out) override {
        resize(B, T);
        rope_.ensure(T);
        const int H = H_, dh = dh_, dR = dR_, dk = dh_ + dR_;
        // 1. projections (paper 2.1.2 and 2.1.3)
        x_ = x;                                                              // [B*T, D]
        if (dcp_ > 0) {
            gemm::nt(cq_hat_, x, w_dq_.W());                   // [B*T, dcp]  x w_dqᵀ, then ĉ_Q
            rmsnorm_forward<S>(cq_hat_, q_norm_.w, eps_, cq_rstd_.data(), cq_);  // c_Q [B*T, dcp]
            gemm::nt(qc_, cq_, w_uq_.W());                     // [B*T, H*dh]
            gemm::nt(qr_, cq_, w_qr_.W());                     // [B*T, H*dR]
        } else {
            gemm::nt(qc_, x, wq_.W());                         // [B*T, H*dh]
            gemm::nt(qr_, x, w_qr_.W());                       // [B*T, H*dR]
        }
        gemm::nt(ckv_hat_, x, w_dkv_.W());                     // [B*T, dc]  x w_dkvᵀ, then ĉ_KV
        rmsnorm_forward<S>(ckv_hat_, kv_norm_.w, eps_, ckv_rstd_.data(), ckv_);  // c_KV [B*T, dc]
        gemm::nt(kc_, ckv_, w_uk_.W());                        // [B*T, H*dh]
        gemm::nt(v_, ckv_, w_uv_.W());                         // [B*T, H*dh]
        gemm::nt(kr_, x, w_kr_.W());                           // [B*T, dR]
        // 2. RoPE: qR per head (H heads of width dR), kR one shared head
        rope_.apply_rows(qr_, T, 0, H);
        rope_.apply_rows(kr_, T, 0, 1);
        // 3. q_i = [qC_i, qR_i], k_i = [kC_i, kR]                          // [B*T, H*dk] each
        for (int i = 0; i < H; ++i) {
            qcat_.middleCols(i * dk, dh) = qc_.middleCols(i * dh, dh);
            qcat_.middleCols(i * dk + dh, dR) = qr_.middleCols(i * dR, dR);
            kcat_.middleCols(i * dk, dh) = kc_.middleCols(i * dh, dh);
            kcat_.middleCols(i * dk + dh, dR) = kr_;
        }
        // 4. o_i = softmax(q_i k_iᵀ / sqrt(dh + dR) + causal mask) v_i, per (sequence, head)
        const S scale = S(1) / std::sqrt(S(dk));
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < B; ++b)
            for (int i = 0; i < H; ++i)
                sdpa_forward<S>(qcat_.block(b * T, i * dk, T, dk), kcat_.block(b * T, i * dk, T, dk),
                                v_.block(b * T, i * dh, T, dh), scale, probs(b, i), o_.block(b * T, i * dh, T, dh));
        // 5. output projection
        gemm::nt(out, o_, wo_.W());                            // [B*T, D]
    }

    void backward(CRef dout, Ref dx) override {
        KV_CHECK(B_ > 0, "mla backward called before forward");
        const int B = B_, T = T_, H = H_, dh = dh_, dR = dR_, dk = dh_ + dR_;
        // 5. out = o woᵀ
        gemm::tn(wo_.dW(), dout, o_, gemm::add);                         // [D, H*dh]
        gemm::nn(do_, dout, wo_.W());                                      // [B*T, H*dh]
        // 4. o_i = softmax(q_i k_iᵀ · scale + mask) v_i. Every (b, i) writes only its own
        //    slices of dqcat, dkcat, dv; dP is the running thread's scratch.
        const S scale = S(1) / std::sqrt(S(dk));
        dkcat_.setZero();
        dv_.setZero();
        ensure_scratch();
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < B; ++b)
            for (int i = 0; i < H; ++i)
                sdpa_backward<S>(qcat_.block(b * T, i * dk, T, dk), kcat_.block(b * T, i * dk, T, dk),
                                 v_.block(b * T, i * dh, T, dh), probs(b, i), do_.block(b * T, i * dh, T, dh), scale,
                                 dP_.middleRows(static_cast<Eigen::Index>(omp_get_thread_num()) * kSdpaBlock, kSdpaBlock),
                                 dqcat_.block(b * T, i * dk, T, dk), dkcat_.block(b * T, i * dk, T, dk),
                                 dv_.block(b * T, i * dh, T, dh));
        // 3. q_i = [qC_i, qR_i], k_i = [kC_i, kR]: split the per-head gradients. kR is shared
        //    by all heads, so dkR = Σ_i (dk_i)[dh:dk], summed in head order (thread-count independent).
        dkr_.setZero();                                                      // [B*T, dR]
        for (int i = 0; i < H; ++i) {
            dqc_.middleCols(i * dh, dh) = dqcat_.middleCols(i * dk, dh);     // [B*T, H*dh]
            dqr_.middleCols(i * dR, dR) = dqcat_.middleCols(i * dk + dh, dR);  // [B*T, H*dR]
            dkc_.middleCols(i * dh, dh) = dkcat_.middleCols(i * dk, dh);     // [B*T, H*dh]
            dkr_ += dkcat_.middleCols(i * dk + dh, dR);
        }
        // 2. qR = RoPE_per_head(·), kR = RoPE(·): a rotation, so the backward is the inverse rotation
        rope_.apply_rows(dqr_, T, 0, H, /*inverse=*/true);
        rope_.apply_rows(dkr_, T, 0, 1, /*inverse=*/true);
        // 1. projections, in reverse.
        // kR = x w_krᵀ
        gemm::tn(w_kr_.dW(), dkr_, x_, gemm::add);                       // [dR, D]
        gemm::nn(dx, dkr_, w_kr_.W());                                     // [B*T, D]
        // v = c_KV w_uvᵀ,  kC = c_KV w_ukᵀ
        gemm::tn(w_uv_.dW(), dv_, ckv_, gemm::add);                      // [H*dh, dc]
        gemm::tn(w_uk_.dW(), dkc_, ckv_, gemm::add);                     // [H*dh, dc]
        gemm::nn(dckv_, dv_, w_uv_.W());                                   // [B*T, dc]
        gemm::nn(dckv_, dkc_, w_uk_.W(), gemm::add);
        // c_KV = RMSNorm(x w_dkvᵀ; kv_norm)   (dckv_ becomes d(x w_dkvᵀ))
        rmsnorm_backward<S>(dckv_, ckv_hat_, ckv_rstd_.data(), kv_norm_.w, kv_norm_.g);
        // x w_dkvᵀ
        gemm::tn(w_dkv_.dW(), dckv_, x_, gemm::add);                     // [dc, D]
        gemm::nn(dx, dckv_, w_dkv_.W(), gemm::add);
        if (dcp_ > 0) {
            // qC = c_Q w_uqᵀ,  qR = RoPE_per_head(c_Q w_qrᵀ)
            gemm::tn(w_uq_.dW(), dqc_, cq_, gemm::add);                  // [H*dh, dcp]
            gemm::tn(w_qr_.dW(), dqr_, cq_, gemm::add);                  // [H*dR, dcp]
            gemm::nn(dcq_, dqc_, w_uq_.W());                               // [B*T, dcp]
            gemm::nn(dcq_, dqr_, w_qr_.W(), gemm::add);
            // c_Q = RMSNorm(x w_dqᵀ; q_norm)   (dcq_ becomes d(x w_dqᵀ))
            rmsnorm_backward<S>(dcq_, cq_hat_, cq_rstd_.data(), q_norm_.w, q_norm_.g);
            // x w_dqᵀ
            gemm::tn(w_dq_.dW(), dcq_, x_, gemm::add);                   // [dcp, D]
            gemm::nn(dx, dcq_, w_dq_.W(), gemm::add);
        } else {
            // qC = x wqᵀ,  qR = RoPE_per_head(x w_qrᵀ)
            gemm::tn(wq_.dW(), dqc_, x_, gemm::add);                     // [H*dh, D]
            gemm::tn(w_qr_.dW(), dqr_, x_, gemm::add);                   // [H*dR, D]
            gemm::nn(dx, dqc_, wq_.W(), gemm::add);
            gemm::nn(dx, dqr_, w_qr_.W(), gemm::add);
        }
    }

    int64_t activation_bytes() const override {
        int64_t n = cq_rstd_.size() + ckv_rstd_.size();
        for (const Mat* m : {&x_, &cq_hat_, &cq_, &dcq_, &ckv_hat_, &ckv_, &dckv_, &qc_, &dqc_, &kc_, &dkc_, &qr_, &dqr_,
                             &kr_, &dkr_, &qcat_, &dqcat_, &kcat_, &dkcat_, &v_, &dv_, &o_, &do_, &P_, &dP_})
            n += m->size();
        return n * static_cast<int64_t>(sizeof(S));
    }

    int64_t kv_elements_per_token() const override { return static_cast<int64_t>(dc_) + dR_; }
    std::vector<std::string> decode_impls() const override { return {"absorbed", "naive"}; }

    // The counted state is c_KV and kR of every cached token, nothing else. The per-head
    // keys kC_i = c_KV W_UK,iᵀ and values v_i = c_KV W_UV,iᵀ are never stored.
    struct Cache final : DecodeCache {
        using ColMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
        bool naive = false;
        // Latent-major: c_KV (latents 0..dc-1) and the RoPE'd shared key kR (dc..dc+dR-1) of
        // tokens 0..length-1, token t in column t (counted). For absorbed decoding in float
        // with AVX-512 or AVX2 in latent_kernels.h's tiles of 32 tokens (tiled); otherwise
        // plain, [dc + dR, max_T] row-major. dc + dR floats per token either way.
        bool tiled = false;
        VecT<S> lat;
        Mat tok;                       // [1, dc + dR]  this token's c_KV and kR before they are stored
        // Per-step scratch, not counted in bytes():
        Mat cq;                        // [1, dcp]
        Mat qc, qr;                    // [1, H*dh], [1, H*dR]
        Mat qabs;                      // [H, dc + dR]  absorbed queries [q̃_i | qR_i], q̃_i = qC_i W_UK,i
        Mat part_o;                    // fused: [threads·H, dc] each thread's unnormalised õ per head
        std::vector<S> part_m, part_l; // fused: [threads·H] its running max and Σ exp per head
        std::vector<S> part_scratch;   // fused: latent::attend's scratch, per thread
        ColMat sT;                     // not fused: [max_T, H] scores, then probabilities; head i's in column i
        ColMat oT;                     // [dc, H]   õ_iᵀ = C_KVᵀ p_iᵀ in column i
        Mat o;                         // [1, H*dh] concat_i(o_i)
        Mat kc_all, v_all;             // naive: [max_T, H*dh] decompressed keys and values
        Mat qcat, kcat, p;             // naive: [1, dk], [max_T, dk], [1, max_T]
        Rope<S> rope;                  // cos/sin tables for positions 0..max_T-1 (the forward's values)
        int64_t bytes() const override { return static_cast<int64_t>(lat.size() * sizeof(S)); }
        int K() const { return int(tok.cols()); }
        Eigen::Map<const Mat> plain() const { return {lat.data(), K(), max_T}; }   // when !tiled
        void store(int t) {   // this token (tok) into column t
            for (int k = 0; k < K(); ++k)
                lat[Eigen::Index(tiled ? latent::latent_index(K(), max_T, k, t) : size_t(k) * max_T + t)] = tok(0, k);
        }
    };

    std::unique_ptr<DecodeCache> new_decode_cache(int max_T, std::string_view impl) const override {
        if (!impl.empty() && impl != "absorbed" && impl != "naive")
            throw Error(
                fmt::format("attention 'mla' has no decode implementation '{}' (available: absorbed, naive)", impl));
        KV_CHECK(max_T > 0, "decode cache needs max_T > 0, got {}", max_T);
        const int H = H_, dh = dh_, dk = dh_ + dR_;
        auto c = std::make_unique<Cache>();
        c->naive = impl == "naive";
        c->max_T = max_T;
        c->tiled = kFused && !c->naive;
        c->lat.resize(Eigen::Index(dc_ + dR_) * max_T);
        c->tok.resize(1, dc_ + dR_);
        c->cq.resize(1, dcp_);
        c->qc.resize(1, H * dh);
        c->qr.resize(1, H * dR_);
        c->o.resize(1, H * dh);
        if (c->naive) {
            c->kc_all.resize(max_T, H * dh);
            c->v_all.resize(max_T, H * dh);
            c->qcat.resize(1, dk);
            c->kcat.resize(max_T, dk);
            c->p.resize(1, max_T);
        } else {
            c->qabs.resize(H, dc_ + dR_);
            if (!kFused) c->sT.resize(max_T, H);
            c->oT.resize(dc_, H);
        }
        c->rope = rope_;
        c->rope.ensure(max_T);
        return c;
    }

    // Decoding one token at position t = cache.length. The cache holds only c_KV and kR.
    // absorbed (default): w_uk is absorbed on the query side and w_uv on the output side:
    //   q_i · k_{i,t'} = qC_i · (c_KV_t' W_UK,iᵀ) + qR_i · kR_t' = (qC_i W_UK,i) · c_KV_t' + qR_i · kR_t'
    //   o_i = Σ_t' p_t' c_KV_t' W_UV,iᵀ = (p C_KV) W_UV,iᵀ
    //   so all heads attend over the latents themselves (like MQA with key width dc + dR
    //   and value width dc). The absorption is done per step from the bound weights, not
    //   precomputed: it costs H·dh·dc per token (the size of w_uk) and can never go stale.
    // naive: decompress kC = C_KV w_ukᵀ and V = C_KV w_uvᵀ for every cached token at every
    //   step (into scratch) and attend as forward does: the reference path.
    // Absorbed decoding in float runs the AVX-512 or AVX2 kernels of latent_kernels.h, when
    // built in.
    static constexpr bool kFused = std::is_same_v<S, float> && latent::available();

    // One thread's share of steps 4-5a, tokens [a, b) of the cache, in one pass with an
    // online softmax (latent::attend): per head the running max m and sum l of
    // exp(s·scale − m), and the unnormalised õ. The values are those of softmax then
    // p · C_KV (summation order aside).
    void latent_part(Cache& c, int thread, int a, int b, S scale) const {
        if constexpr (kFused) {
            const int H = H_;
            latent::attend(c.lat.data(), dc_ + dR_, dc_, c.max_T, c.qabs.data(), H, a, b, scale,
                           c.part_scratch.data() + size_t(thread) * latent::attend_scratch(H, dc_ + dR_, dc_),
                           c.part_o.data() + size_t(thread) * H * dc_, c.part_m.data() + size_t(thread) * H,
                           c.part_l.data() + size_t(thread) * H);
        }
    }

    // õ_i = Σ_threads õ_part · exp(m_part − M) / Σ_threads l_part · exp(m_part − M), M the
    // largest m_part, into column i of oT. A thread without tokens has m = −inf: weight 0.
    void combine_parts(Cache& c, int threads, int i) const {
        S M = -std::numeric_limits<S>::infinity();
        for (int r = 0; r < threads; ++r) M = std::max(M, c.part_m[size_t(r) * H_ + i]);
        S L = 0;
        auto col = c.oT.col(i);
        col.setZero();
        for (int r = 0; r < threads; ++r) {
            const S w = std::exp(c.part_m[size_t(r) * H_ + i] - M);
            L += c.part_l[size_t(r) * H_ + i] * w;
            col += w * c.part_o.row(r * H_ + i).transpose();
        }
        col *= S(1) / L;
    }

    void decode_step(DecodeCache& base, CRef x, Ref out) const override {
        auto& c = static_cast<Cache&>(base);
        KV_CHECK(c.length < c.max_T, "decode cache full ({} tokens)", c.max_T);
        const int t = c.length, n = t + 1, H = H_, dh = dh_, dR = dR_;
        const S scale = S(1) / std::sqrt(S(dh + dR));
        // 1. projections of this token (as forward): the matrix-vector products of one input
        //    in one parallel region, their rows split across threads (ops::matvecs_t)
        auto ckv_t = c.tok.leftCols(dc_);                                    // [1, dc]
        auto kr_t = c.tok.rightCols(dR);                                     // [1, dR]
        S rs;
        if (dcp_ > 0) {
            ops::matvecs_t<S>(x, {{w_dq_.W(), c.cq.data()}, {w_dkv_.W(), ckv_t.data()}, {w_kr_.W(), kr_t.data()}});
            rmsnorm_forward<S>(c.cq, q_norm_.w, eps_, &rs, c.cq);            // c_Q (in place: x̂ ⊙ g)
            ops::matvecs_t<S>(c.cq, {{w_uq_.W(), c.qc.data()}, {w_qr_.W(), c.qr.data()}});   // [1, H*dh], [1, H*dR]
        } else {
            ops::matvecs_t<S>(x, {{wq_.W(), c.qc.data()}, {w_qr_.W(), c.qr.data()}, {w_dkv_.W(), ckv_t.data()},
                                  {w_kr_.W(), kr_t.data()}});
        }
        rmsnorm_forward<S>(ckv_t, kv_norm_.w, eps_, &rs, ckv_t);
        // 2. RoPE at position t; the token joins the cache as column t
        c.rope.apply(c.qr.data(), H, t);
        c.rope.apply(kr_t.data(), 1, t);
        c.store(t);
        if (!c.naive) {
            // With more than one thread and enough cached tokens, each step below is shared
            // out, in one parallel region: heads (3, softmax, 5b), cached tokens (4) or latent
            // columns (5a).
            const bool parallel = static_cast<int64_t>(n) * (dc_ + dR) >= ops::kParallelMatvec;
            const int nt = parallel ? omp_get_max_threads() : 1;
            // 3. absorbed queries [q̃_i | qR_i], q̃_i = qC_i · W_UK,i   ([1, dh]·[dh, dc] = [1, dc])
            //    (first in the region below)
            // 4. scores s_i,t' = (q̃_i · c_KV_t' + qR_i · kR_t') · scale = [q̃_i | qR_i] · lat[:, t'],
            //    softmax over t'; 5a. õ_i = p_i · C_KV.
            //    In float with AVX-512 or AVX2 (kFused), 4 and 5a are one pass over the cache:
            //    each thread takes a range of cached tokens, in chunks that stay in L2, with
            //    an online softmax (latent_part), and the threads' parts are combined per head.
            //    Otherwise: Eigen's products, the scores of all tokens first.
            const int K = dc_ + dR;
            if constexpr (kFused) {
                c.part_o.resize(nt * H, dc_);   // no allocation once sized
                c.part_m.resize(size_t(nt) * H);
                c.part_l.resize(size_t(nt) * H);
                c.part_scratch.resize(size_t(nt) * latent::attend_scratch(H, K, dc_));
            }
#pragma omp parallel num_threads(nt)
            {
#pragma omp for schedule(static)
                for (int i = 0; i < H; ++i) {   // 3.
                    c.qabs.row(i).leftCols(dc_).noalias() =
                        c.qc.middleCols(i * dh, dh) * w_uk_.W().middleRows(i * dh, dh);
                    c.qabs.row(i).rightCols(dR) = c.qr.middleCols(i * dR, dR);
                }
                const int k = omp_get_thread_num(), m = omp_get_num_threads();
                // token ranges start on a tile (32 tokens) so that no tile is split between threads
                const auto edge = [&](int r) { return r == m ? Eigen::Index(n) : Eigen::Index(n) * r / m / 32 * 32; };
                const Eigen::Index a = edge(k), b = edge(k + 1);
                if constexpr (kFused) {
                    // 4-5a in one pass over this thread's tokens, then the threads' parts combined
                    latent_part(c, k, int(a), int(b), scale);
#pragma omp barrier
#pragma omp for schedule(static)
                    for (int i = 0; i < H; ++i) combine_parts(c, m, i);
                } else {
                    auto sT = c.sT.topRows(n);                               // [n, H]
                    if (b > a)
                        sT.middleRows(a, b - a).noalias() = c.plain().block(0, a, K, b - a).transpose() * c.qabs.transpose();
#pragma omp barrier
#pragma omp for schedule(static)
                    for (int i = 0; i < H; ++i) softmax_scaled_row(&c.sT(0, i), n, scale);
                    // 5a. õ_i = p_i · C_KV  ([1, n]·[n, dc]), a block of the dc latent columns each
                    const Eigen::Index ca = Eigen::Index(dc_) * k / m, cb = Eigen::Index(dc_) * (k + 1) / m;
                    if (cb > ca) c.oT.middleRows(ca, cb - ca).noalias() = c.plain().block(ca, 0, cb - ca, n) * sT;
#pragma omp barrier
                }
                // 5b. o_i = õ_i · W_UV,iᵀ  ([1, dc]·[dc, dh])
#pragma omp for schedule(static)
                for (int i = 0; i < H; ++i)
                    c.o.middleCols(i * dh, dh).noalias() =
                        c.oT.col(i).transpose() * w_uv_.W().middleRows(i * dh, dh).transpose();
            }
        } else {
            const auto C = c.plain().topLeftCorner(dc_, n).transpose();     // [n, dc]
            const auto KR = c.plain().block(dc_, 0, dR, n).transpose();     // [n, dR]
            // 3. decompress every cached token: kC = C_KV w_ukᵀ, V = C_KV w_uvᵀ   [n, H*dh] each
            c.kc_all.topRows(n).noalias() = C * w_uk_.W().transpose();
            c.v_all.topRows(n).noalias() = C * w_uv_.W().transpose();
            c.kcat.block(0, dh, n, dR) = KR;                                 // kR, shared by all heads
            // 4-5. per head: q_i = [qC_i, qR_i], k_i = [kC_i, kR], attend as forward does
            for (int i = 0; i < H; ++i) {
                c.qcat.leftCols(dh) = c.qc.middleCols(i * dh, dh);
                c.qcat.rightCols(dR) = c.qr.middleCols(i * dR, dR);
                c.kcat.block(0, 0, n, dh) = c.kc_all.block(0, i * dh, n, dh);
                sdpa_decode<S>(c.qcat, c.kcat.topRows(n), c.v_all.block(0, i * dh, n, dh), scale, c.p.leftCols(n),
                               c.o.middleCols(i * dh, dh));
            }
        }
        // 6. output projection
        ops::matvec_t(c.o, wo_.W(), out);                                    // [1, D]
        ++c.length;
    }

private:
    // One trainable tensor: its model.md name and shape, and where bind() put it. A gain
    // [n] is viewed as [1, n].
    struct Param {
        std::string name;
        std::vector<int64_t> shape;
        S* w = nullptr;
        S* g = nullptr;
        Eigen::Index rows() const { return shape.size() == 2 ? shape[0] : 1; }
        Eigen::Index cols() const { return shape.back(); }
        CMapT<S> W() const { return CMapT<S>(w, rows(), cols()); }
        MapT<S> dW() const { return MapT<S>(g, rows(), cols()); }
    };

    void add(Param& p, const char* name, std::vector<int64_t> shape) {
        p.name = name;
        p.shape = std::move(shape);
        order_.push_back(&p);
    }

    auto probs(int b, int i) { return P_.block(static_cast<Eigen::Index>(b * H_ + i) * T_, 0, T_, T_); }
    // dP: one block of rows per thread, [threads * kSdpaBlock, T]
    void ensure_scratch() {
        const Eigen::Index rows = static_cast<Eigen::Index>(omp_get_max_threads()) * kSdpaBlock;
        if (dP_.rows() < rows || dP_.cols() != T_) dP_.resize(rows, T_);
    }

    void resize(int B, int T) {
        if (B == B_ && T == T_) return;
        B_ = B;
        T_ = T;
        const Eigen::Index BT = static_cast<Eigen::Index>(B) * T, Hdh = H_ * dh_, Hdk = H_ * (dh_ + dR_);
        x_.resize(BT, D_);
        cq_hat_.resize(BT, dcp_);
        cq_rstd_.resize(BT);
        cq_.resize(BT, dcp_);
        dcq_.resize(BT, dcp_);
        ckv_hat_.resize(BT, dc_);
        ckv_rstd_.resize(BT);
        ckv_.resize(BT, dc_);
        dckv_.resize(BT, dc_);
        qc_.resize(BT, Hdh);
        dqc_.resize(BT, Hdh);
        qr_.resize(BT, H_ * dR_);
        dqr_.resize(BT, H_ * dR_);
        kc_.resize(BT, Hdh);
        dkc_.resize(BT, Hdh);
        kr_.resize(BT, dR_);
        dkr_.resize(BT, dR_);
        qcat_.resize(BT, Hdk);
        dqcat_.resize(BT, Hdk);
        kcat_.resize(BT, Hdk);
        dkcat_.resize(BT, Hdk);
        v_.resize(BT, Hdh);
        dv_.resize(BT, Hdh);
        o_.resize(BT, Hdh);
        do_.resize(BT, Hdh);
        P_.resize(static_cast<Eigen::Index>(B) * H_ * T, T);    // [B, H, T, T]
        dP_.resize(0, 0);
        ensure_scratch();
    }

    int D_, H_, dh_, dc_ = 0, dcp_ = 0, dR_ = 0;
    S eps_;
    Rope<S> rope_;
    Param wq_, w_dq_, q_norm_, w_uq_, w_qr_, w_dkv_, kv_norm_, w_uk_, w_uv_, w_kr_, wo_;
    std::vector<Param*> order_;   // the active parameters, in model.md's order
    int B_ = 0, T_ = 0;
    Mat x_;                       // [B*T, D]
    Mat cq_hat_, cq_, dcq_;       // [B*T, dcp]  ĉ_Q, c_Q, and the gradient buffer (empty if dcp = 0)
    VecT<S> cq_rstd_;             // [B*T]
    Mat ckv_hat_, ckv_, dckv_;    // [B*T, dc]   ĉ_KV, c_KV, and the gradient buffer
    VecT<S> ckv_rstd_;            // [B*T]
    Mat qc_, dqc_, kc_, dkc_;     // [B*T, H*dh]
    Mat qr_, dqr_;                // [B*T, H*dR]
    Mat kr_, dkr_;                // [B*T, dR]
    Mat qcat_, dqcat_, kcat_, dkcat_;  // [B*T, H*dk]  per-head [qC_i, qR_i] and [kC_i, kR]
    Mat v_, dv_, o_, do_;         // [B*T, H*dh]
    Mat P_;                       // [B*H*T, T]
    Mat dP_;                      // [threads*kSdpaBlock, T] backward scratch
};

}  // namespace

template <class S>
std::unique_ptr<Attention<S>> make_mla(const ModelConfig& c) {
    return std::make_unique<Mla<S>>(c);
}

template std::unique_ptr<Attention<float>> make_mla<float>(const ModelConfig&);
template std::unique_ptr<Attention<double>> make_mla<double>(const ModelConfig&);

}  // namespace kvlab
