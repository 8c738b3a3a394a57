// Forward and backward of the whole model (model.md "Forward pass"). Each block's
// backward walks its forward in reverse; comments quote the forward line being
// differentiated. Shapes: N = B*T rows, D = d_model, F = mlp_hidden, V = vocab_size.
#include "model/transformer.h"

#include "attention/registry.h"
#include "core/gemm.h"
#include "core/rng.h"
#include "model/ops.h"

#include <fmt/format.h>

#include <chrono>

namespace kvlab {
namespace {

// Adds the seconds since the previous lap to one OpTimes field, when timing is on.
class Lap {
public:
    explicit Lap(bool on) : on_(on) {
        if (on_) t_ = std::chrono::steady_clock::now();
    }
    void operator()(double& acc) {
        if (!on_) return;
        const auto now = std::chrono::steady_clock::now();
        acc += std::chrono::duration<double>(now - t_).count();
        t_ = now;
    }

private:
    bool on_;
    std::chrono::steady_clock::time_point t_;
};

}  // namespace

template <class S>
struct Transformer<S>::Layer {
    // parameters (into the arenas)
    S *attn_norm, *mlp_norm, *w_gate, *w_up, *w_down;
    S *d_attn_norm, *d_mlp_norm, *dw_gate, *dw_up, *dw_down;
    // activations kept for backward
    Mat x_in;             // [N, D] residual stream entering the block
    Mat xn1;              // [N, D] RMSNorm(x_in; attn_norm)
    VecT<S> r1, r2;       // [N] inverse rms of the two norms
    Mat attn_out;         // [N, D]
    Mat h;                // [N, D] x_in + attn_out
    Mat xn2;              // [N, D] RMSNorm(h; mlp_norm)
    Mat ab;               // [N, 2F] gate | up pre-activations a | b (w_gate, w_up are one [2F, D] matrix)
    Mat hmid;             // [N, F] silu(a) ⊙ b
};

template <class S>
Transformer<S>::Transformer(const ModelConfig& cfg) : Transformer(cfg, nullptr) {}

template <class S>
Transformer<S>::Transformer(ReplicaOf r) : Transformer(r.parameters_of.cfg_, r.parameters_of.theta_ptr_) {}

template <class S>
Transformer<S>::Transformer(const ModelConfig& cfg, S* shared_theta)
    : cfg_(cfg), D_(cfg.d_model), V_(cfg.vocab_size), F_(cfg.mlp_hidden), L_(cfg.n_layers) {
    gemm::init();   // the GEMM backend, chosen here: before any parallel region multiplies
    // 1. the parameter list, in model.md's names and order
    std::vector<ParamSpec> specs;
    specs.push_back({"embed", {V_, D_}});
    for (int l = 0; l < L_; ++l) {
        attn_.push_back(make_attention<S>(cfg));
        const std::string pre = fmt::format("layers.{}.", l);
        specs.push_back({pre + "attn_norm", {D_}});
        for (auto& s : attn_.back()->param_specs()) specs.push_back({pre + "attn." + s.name, s.shape});
        specs.push_back({pre + "mlp_norm", {D_}});
        specs.push_back({pre + "mlp.w_gate", {F_, D_}});
        specs.push_back({pre + "mlp.w_up", {F_, D_}});
        specs.push_back({pre + "mlp.w_down", {D_, F_}});
    }
    specs.push_back({"final_norm", {D_}});
    if (!cfg.tie_embeddings) specs.push_back({"lm_head", {V_, D_}});

    // 2. the arenas
    int64_t off = 0;
    for (auto& s : specs) {
        params_.push_back({s, off});
        off += s.numel();
    }
    if (!shared_theta) theta_.assign(off, S(0));
    theta_ptr_ = shared_theta ? shared_theta : theta_.data();
    grad_.assign(off, S(0));

    // 3. bind plugins and layers to their slices
    for (int l = 0; l < L_; ++l) {
        const std::string pre = fmt::format("layers.{}.", l);
        ParamViews<S> pv, gv;
        for (auto& s : attn_[l]->param_specs()) {
            const auto& np = find(pre + "attn." + s.name);
            pv.add(s.name, theta_ptr_ + np.offset, s.shape);
            gv.add(s.name, grad_.data() + np.offset, s.shape);
        }
        attn_[l]->bind(pv, gv);
        auto L = std::make_unique<Layer>();
        L->attn_norm = p(pre + "attn_norm");
        L->mlp_norm = p(pre + "mlp_norm");
        L->w_gate = p(pre + "mlp.w_gate");
        L->w_up = p(pre + "mlp.w_up");
        L->w_down = p(pre + "mlp.w_down");
        L->d_attn_norm = g(pre + "attn_norm");
        L->d_mlp_norm = g(pre + "mlp_norm");
        L->dw_gate = g(pre + "mlp.w_gate");
        L->dw_up = g(pre + "mlp.w_up");
        L->dw_down = g(pre + "mlp.w_down");
        // the MLP multiplies by [w_gate; w_up] as one [2F, D] matrix (consecutive in the arenas)
        KV_CHECK(L->w_up == L->w_gate + int64_t{F_} * D_ && L->dw_up == L->dw_gate + int64_t{F_} * D_,
                 "w_gate and w_up must be consecutive in the arenas");
        layers_.push_back(std::move(L));
    }
}

template <class S>
Transformer<S>::~Transformer() = default;

template <class S>
const NamedParam& Transformer<S>::find(const std::string& name) const {
    for (const auto& np : params_)
        if (np.spec.name == name) return np;
    KV_CHECK(false, "no parameter named '{}'", name);
    return params_.front();
}

template <class S>
S* Transformer<S>::p(const std::string& name) {
    return theta_ptr_ + find(name).offset;
}
template <class S>
S* Transformer<S>::g(const std::string& name) {
    return grad_.data() + find(name).offset;
}

template <class S>
void Transformer<S>::init(uint64_t seed) {
    Rng rng = Rng::stream(seed, /*stream id: weights*/ 1);
    for (const auto& np : params_) {
        S* w = theta_ptr_ + np.offset;
        const int64_t n = np.spec.numel();
        if (np.spec.shape.size() == 1)
            std::fill(w, w + n, S(1));
        else
            for (int64_t i = 0; i < n; ++i) w[i] = static_cast<S>(0.02 * rng.normal());
    }
}

template <class S>
void Transformer<S>::zero_grad() {
    std::fill(grad_.begin(), grad_.end(), S(0));
}

template <class S>
void Transformer<S>::resize(int B, int T) {
    if (B == B_ && T == T_) return;
    B_ = B;
    T_ = T;
    const Eigen::Index N = static_cast<Eigen::Index>(B) * T;
    inputs_.resize(N);
    targets_.resize(N);
    for (auto& L : layers_) {
        L->x_in.resize(N, D_);
        L->xn1.resize(N, D_);
        L->r1.resize(N);
        L->r2.resize(N);
        L->attn_out.resize(N, D_);
        L->h.resize(N, D_);
        L->xn2.resize(N, D_);
        L->ab.resize(N, 2 * F_);
        L->hmid.resize(N, F_);
    }
    xf_.resize(N, D_);
    xnf_.resize(N, D_);
    rf_.resize(N);
    logits_.resize(N, V_);
    probs_.resize(N, V_);
    row_loss_.resize(N);
    dx_.resize(N, D_);
    dh_.resize(N, D_);
    dxn_.resize(N, D_);
    dtmp_.resize(N, D_);
    work_.resize(N, D_);
    dab_.resize(N, 2 * F_);
    dhmid_.resize(N, F_);
    wgrad_.resize(2 * F_, D_);
}

template <class S>
double Transformer<S>::forward(const int32_t* inputs, const int32_t* targets, int B, int T) {
    resize(B, T);
    const Eigen::Index N = static_cast<Eigen::Index>(B) * T;
    std::copy(inputs, inputs + N, inputs_.begin());
    if (targets)
        std::copy(targets, targets + N, targets_.begin());
    else
        std::fill(targets_.begin(), targets_.end(), -1);
    has_targets_ = targets != nullptr;
    const S* embed = p("embed");
    Lap lap(timing_);
    OpTimes& ot = op_times_;

    // x_0 = embed[tokens]
    Mat& x0 = L_ > 0 ? layers_[0]->x_in : xf_;
    for (Eigen::Index n = 0; n < N; ++n) {
        KV_CHECK(inputs[n] >= 0 && inputs[n] < V_, "token id {} out of range [0, {})", inputs[n], V_);
        x0.row(n) = CMapT<S>(embed + static_cast<int64_t>(inputs[n]) * D_, 1, D_);
    }
    lap(ot.embed);
    for (int l = 0; l < L_; ++l) {
        Layer& Ly = *layers_[l];
        // h = x_l + Attn_l(RMSNorm(x_l; attn_norm_l))
        ops::rmsnorm_forward<S>(Ly.x_in, Ly.attn_norm, cfg_.norm_eps, Ly.xn1, Ly.r1.data());
        lap(ot.norm_fwd);
        attn_[l]->forward(B, T, Ly.xn1, Ly.attn_out);
        lap(ot.attn_fwd);
        Ly.h = Ly.x_in + Ly.attn_out;
        // x_{l+1} = h + MLP_l(RMSNorm(h; mlp_norm_l)),  MLP(x) = (silu(x w_gateᵀ) ⊙ (x w_upᵀ)) w_downᵀ
        ops::rmsnorm_forward<S>(Ly.h, Ly.mlp_norm, cfg_.norm_eps, Ly.xn2, Ly.r2.data());
        lap(ot.norm_fwd);
        gemm::nt(Ly.ab, Ly.xn2, CMapT<S>(Ly.w_gate, 2 * F_, D_));   // [N, 2F]  [a | b]
        ops::swiglu_forward<S>(Ly.ab.leftCols(F_), Ly.ab.rightCols(F_), Ly.hmid);
        Mat& x_next = l + 1 < L_ ? layers_[l + 1]->x_in : xf_;
        x_next = Ly.h;
        gemm::nt(x_next, Ly.hmid, CMapT<S>(Ly.w_down, D_, F_), gemm::add);
        lap(ot.mlp_fwd);
    }
    // logits = RMSNorm(x_L; final_norm) lm_headᵀ
    ops::rmsnorm_forward<S>(xf_, p("final_norm"), cfg_.norm_eps, xnf_, rf_.data());
    const S* lm = cfg_.tie_embeddings ? embed : p("lm_head");
    gemm::nt(logits_, xnf_, CMapT<S>(lm, V_, D_));            // [N, V]
    // loss = mean over targets != -1 of −log softmax(logits_t)[target_t]
    const double total = ops::cross_entropy_forward<S>(logits_, targets_.data(), probs_, row_loss_.data(), n_scored_);
    lap(ot.head_fwd);
    return n_scored_ > 0 ? total / double(n_scored_) : 0.0;
}

template <class S>
void Transformer<S>::backward(int64_t denominator) {
    KV_CHECK(has_targets_, "backward needs a forward with targets");
    KV_CHECK(denominator >= 0, "backward: denominator {} < 0", denominator);
    const int B = B_, T = T_;
    const Eigen::Index N = static_cast<Eigen::Index>(B) * T;
    S* embed = p("embed");
    S* dembed = g("embed");
    const S* lm = cfg_.tie_embeddings ? embed : p("lm_head");
    S* dlm = cfg_.tie_embeddings ? dembed : g("lm_head");
    Lap lap(timing_);
    OpTimes& ot = op_times_;

    // loss = mean CE  →  dlogits (written into probs_, which backward no longer needs)
    ops::cross_entropy_backward<S>(probs_, targets_.data(), denominator > 0 ? denominator : n_scored_, probs_);
    Mat& dlogits = probs_;                                                   // [N, V]
    // logits = xnf lm_headᵀ
    gemm::tn(MapT<S>(dlm, V_, D_), dlogits, xnf_, gemm::add);
    gemm::nn(dxn_, dlogits, CMapT<S>(lm, V_, D_));                         // [N, D]
    // xnf = RMSNorm(x_L; final_norm)
    ops::rmsnorm_backward<S>(xf_, p("final_norm"), rf_.data(), dxn_, dx_, g("final_norm"), work_);
    lap(ot.head_bwd);

    for (int l = L_ - 1; l >= 0; --l) {
        Layer& Ly = *layers_[l];
        // dx_ holds d x_{l+1}.  x_{l+1} = h + hmid w_downᵀ
        gemm::tn(MapT<S>(Ly.dw_down, D_, F_), dx_, Ly.hmid, gemm::add);
        gemm::nn(dhmid_, dx_, CMapT<S>(Ly.w_down, D_, F_));                // [N, F]
        // hmid = silu(a) ⊙ b
        ops::swiglu_backward<S>(Ly.ab.leftCols(F_), Ly.ab.rightCols(F_), dhmid_, dab_.leftCols(F_), dab_.rightCols(F_));
        // [a | b] = xn2 [w_gate; w_up]ᵀ
        ops::add_weight_grad<S>(dab_, Ly.xn2, MapT<S>(Ly.dw_gate, 2 * F_, D_), wgrad_);
        gemm::nn(dxn_, dab_, CMapT<S>(Ly.w_gate, 2 * F_, D_));
        lap(ot.mlp_bwd);
        // xn2 = RMSNorm(h; mlp_norm); dh = d x_{l+1} + (through the MLP branch)
        ops::rmsnorm_backward<S>(Ly.h, Ly.mlp_norm, Ly.r2.data(), dxn_, dtmp_, Ly.d_mlp_norm, work_);
        dh_ = dx_ + dtmp_;
        lap(ot.norm_bwd);
        // h = x_in + Attn(xn1)
        attn_[l]->backward(dh_, dxn_);
        lap(ot.attn_bwd);
        // xn1 = RMSNorm(x_in; attn_norm); d x_l = dh + (through the attention branch)
        ops::rmsnorm_backward<S>(Ly.x_in, Ly.attn_norm, Ly.r1.data(), dxn_, dtmp_, Ly.d_attn_norm, work_);
        dx_ = dh_ + dtmp_;
        lap(ot.norm_bwd);
    }
    // x_0 = embed[tokens]: scatter-add in row order (deterministic)
    for (Eigen::Index n = 0; n < N; ++n)
        MapT<S>(dembed + static_cast<int64_t>(inputs_[n]) * D_, 1, D_) += dx_.row(n);
    lap(ot.embed);
}

template <class S>
void Transformer<S>::count_correct(const int32_t* targets, int64_t& scored, int64_t& correct) const {
    scored = correct = 0;
    for (Eigen::Index n = 0; n < logits_.rows(); ++n) {
        if (targets[n] < 0) continue;
        Eigen::Index arg;
        logits_.row(n).maxCoeff(&arg);
        ++scored;
        correct += (arg == targets[n]);
    }
}

template <class S>
const typename Transformer<S>::Mat& Transformer<S>::attention_input(int layer) const {
    KV_CHECK(layer >= 0 && layer < L_, "layer {} out of range [0, {})", layer, L_);
    return layers_[layer]->xn1;
}

template <class S>
int64_t Transformer<S>::activation_bytes() const {
    int64_t n = 0;   // elements of S
    for (const auto& L : layers_)
        n += L->x_in.size() + L->xn1.size() + L->r1.size() + L->r2.size() + L->attn_out.size() + L->h.size() +
             L->xn2.size() + L->ab.size() + L->hmid.size();
    n += xf_.size() + xnf_.size() + rf_.size() + logits_.size() + probs_.size() + dx_.size() + dh_.size() +
         dxn_.size() + dtmp_.size() + work_.size() + dab_.size() + dhmid_.size() + wgrad_.size();
    int64_t bytes = n * static_cast<int64_t>(sizeof(S));
    bytes += static_cast<int64_t>((inputs_.size() + targets_.size()) * sizeof(int32_t) + row_loss_.size() * sizeof(double));
    for (const auto& a : attn_) bytes += a->activation_bytes();
    return bytes;
}

template <class S>
int64_t Transformer<S>::kv_elements_per_token() const {
    int64_t n = 0;
    for (const auto& a : attn_) n += a->kv_elements_per_token();
    return n;
}

template <class S>
std::vector<std::pair<std::string, double>> Transformer<S>::hyper_params() const {
    std::vector<std::pair<std::string, double>> hp = {
        {"vocab_size", cfg_.vocab_size}, {"d_model", cfg_.d_model},       {"n_layers", cfg_.n_layers},
        {"n_heads", cfg_.n_heads},       {"head_dim", cfg_.head_dim},     {"mlp_hidden", cfg_.mlp_hidden},
        {"rope_theta", cfg_.rope_theta}, {"norm_eps", cfg_.norm_eps},     {"tie_embeddings", cfg_.tie_embeddings ? 1 : 0},
    };
    if (!attn_.empty())
        for (auto& kv : attn_[0]->hyper_params()) hp.push_back(kv);
    return hp;
}

template <class S>
int64_t Transformer<S>::DecodeState::bytes() const {
    int64_t n = 0;
    for (const auto& c : layers) n += c->bytes();
    return n;
}

template <class S>
typename Transformer<S>::DecodeState Transformer<S>::new_decode_state(int max_T, const std::string& impl) const {
    DecodeState st;
    for (const auto& a : attn_) st.layers.push_back(a->new_decode_cache(max_T, impl));
    return st;
}

template <class S>
void Transformer<S>::decode_step(DecodeState& st, int32_t token, S* logits_out) {
    KV_CHECK(token >= 0 && token < V_, "token id {} out of range [0, {})", token, V_);
    if (dec_x_.cols() != D_) {
        dec_x_.resize(1, D_);
        dec_xn_.resize(1, D_);
        dec_tmp_.resize(1, D_);
        dec_h_.resize(1, D_);
        dec_ab_.resize(1, 2 * F_);
        dec_hmid_.resize(1, F_);
    }
    S r;
    dec_x_ = CMapT<S>(p("embed") + static_cast<int64_t>(token) * D_, 1, D_);
    for (int l = 0; l < L_; ++l) {
        Layer& Ly = *layers_[l];
        ops::rmsnorm_forward<S>(dec_x_, Ly.attn_norm, cfg_.norm_eps, dec_xn_, &r);
        attn_[l]->decode_step(*st.layers[l], dec_xn_, dec_tmp_);
        dec_h_ = dec_x_ + dec_tmp_;
        ops::rmsnorm_forward<S>(dec_h_, Ly.mlp_norm, cfg_.norm_eps, dec_xn_, &r);
        ops::mlp_decode<S>(dec_xn_, CMapT<S>(Ly.w_gate, 2 * F_, D_), CMapT<S>(Ly.w_down, D_, F_), dec_ab_, dec_hmid_,
                           dec_tmp_);
        dec_x_ = dec_h_ + dec_tmp_;
    }
    ops::rmsnorm_forward<S>(dec_x_, p("final_norm"), cfg_.norm_eps, dec_xn_, &r);
    const S* lm = cfg_.tie_embeddings ? p("embed") : p("lm_head");
    ops::matvec_t(dec_xn_, CMapT<S>(lm, V_, D_), MapT<S>(logits_out, 1, V_));
}

template class Transformer<float>;
template class Transformer<double>;

}  // namespace kvlab
