// Post-hoc KV compression of MHA/GQA/MQA checkpoints into latent_kv (see compress.h).
#include "lowrank/compress.h"

#include "core/error.h"
#include "model/checkpoint.h"

#include <Eigen/Cholesky>
#include <fmt/format.h>

#include <cmath>

namespace kvlab {

template <class S>
std::vector<MatD> attention_input_grams(Transformer<S>& model, const Task& task, int batches, int batch_size, Rng& rng) {
    KV_CHECK(batches > 0 && batch_size > 0, "calibration needs batches > 0 and batch_size > 0, got {}, {}", batches,
             batch_size);
    const int L = model.config().n_layers, D = model.config().d_model;
    std::vector<MatD> grams(L, MatD::Zero(D, D));
    Batch batch;
    for (int b = 0; b < batches; ++b) {
        task.train_batch(rng, batch_size, batch);
        model.forward(batch.inputs.data(), nullptr, batch.B, batch.T);
        for (int l = 0; l < L; ++l) {
            const MatD X = model.attention_input(l).template cast<double>();   // [B*T, D]
            grams[l].noalias() += X.transpose() * X;                          // [D, D]
        }
    }
    return grams;
}

template std::vector<MatD> attention_input_grams(Transformer<float>&, const Task&, int, int, Rng&);
template std::vector<MatD> attention_input_grams(Transformer<double>&, const Task&, int, int, Rng&);

namespace {

const Tensor& tensor(const ParamSet& p, const std::string& name) {
    for (const auto& t : p.tensors)
        if (t.name == name) return t;
    throw Error(fmt::format("the checkpoint has no tensor '{}'", name));
}

MatD to_mat(const Tensor& t, int64_t rows, int64_t cols) {
    if (t.shape != std::vector<int64_t>{rows, cols})
        throw Error(fmt::format("tensor '{}' has shape [{}], expected [{}, {}]", t.name, fmt::join(t.shape, ", "), rows,
                                cols));
    return Eigen::Map<const Mat>(t.data.data(), rows, cols).cast<double>();
}

Tensor to_tensor(const std::string& name, const MatD& M) {
    Tensor t{name, {M.rows(), M.cols()}, std::vector<float>(static_cast<size_t>(M.size()))};
    Eigen::Map<Mat>(t.data.data(), M.rows(), M.cols()) = M.cast<float>();
    return t;
}

void set_attr(Attrs& a, const std::string& key, AttrValue v) {
    for (auto& [k, x] : a)
        if (k == key) return void(x = std::move(v));
    a.emplace_back(key, std::move(v));
}

}  // namespace

CompressDims compress_dims(const ModelConfig& cfg) {
    int64_t G = 0;
    if (cfg.attention == "mha")
        G = cfg.n_heads;
    else if (cfg.attention == "mqa")
        G = 1;
    else if (cfg.attention == "gqa")
        G = cfg.plugin_int("n_kv_heads", 0);
    else
        throw Error(fmt::format("compress converts mha, gqa or mqa checkpoints (separate wk and wv); this one is '{}'",
                                cfg.attention));
    if (G < 1 || cfg.n_heads % G != 0)
        throw Error(fmt::format("the checkpoint's n_kv_heads ({}) does not divide n_heads ({})", G, cfg.n_heads));
    return {static_cast<int>(G), static_cast<int>(std::min<int64_t>(2 * G * cfg.head_dim, cfg.d_model))};
}

ParamSet compress_to_latent_kv(const ParamSet& src, const CompressOptions& opt, const std::vector<MatD>& grams,
                               std::vector<LayerCompression>* report) {
    const ModelConfig cfg = model_config_from_attrs(src.attrs, "the checkpoint to compress");
    const CompressDims dims = compress_dims(cfg);
    const int64_t G = dims.n_kv_heads, D = cfg.d_model, Gdh = G * cfg.head_dim, max_rank = dims.max_rank;
    if (opt.rank < 1 || opt.rank > max_rank)
        throw Error(fmt::format("--rank {} is impossible: [wk; wv] is [{}, {}], so the rank must be in 1..{} "
                                "(min(2·n_kv_heads·head_dim, d_model))", opt.rank, 2 * Gdh, D, max_rank));
    if (opt.data_aware && static_cast<int>(grams.size()) != cfg.n_layers)
        throw Error(fmt::format("data-aware compression needs one calibration Gram matrix per layer ({}), got {}",
                                cfg.n_layers, grams.size()));
    for (const auto& Gm : grams) KV_CHECK(Gm.rows() == D && Gm.cols() == D, "Gram matrix is not [{}, {}]", D, D);
    auto approx = make_lowrank(opt.method, opt.method_options);
    Rng rng(opt.seed);

    ParamSet out;
    out.attrs = src.attrs;
    set_attr(out.attrs, "attention", std::string("latent_kv"));
    set_attr(out.attrs, "latent_rank", int64_t{opt.rank});
    set_attr(out.attrs, "n_kv_heads", G);
    if (report) report->clear();
    int compressed = 0;
    for (const auto& t : src.tensors) {
        // layers.{l}.attn.wk becomes w_dkv, w_uk, w_uv (latent_kv's order); wv is folded in.
        const auto dot = t.name.find(".attn.");
        const std::string local = dot == std::string::npos ? "" : t.name.substr(dot + 6);
        if (local == "wv") continue;
        if (local != "wk") {
            out.tensors.push_back(t);
            continue;
        }
        const std::string pre = t.name.substr(0, dot + 6);   // "layers.{l}.attn."
        const int l = std::stoi(t.name.substr(7, dot - 7));
        MatD W(2 * Gdh, D);                                               // [2·G·dh, D]  [wk; wv]
        W.topRows(Gdh) = to_mat(t, Gdh, D);
        W.bottomRows(Gdh) = to_mat(tensor(src, pre + "wv"), Gdh, D);
        MatD left, down;                                                  // [2·G·dh, r], [r, D]
        if (opt.data_aware) {
            // XᵀX + λI = L Lᵀ;  M = W L ≈ left · right;  Wdown = right · L⁻¹
            MatD Gm = grams[l];
            const double lambda = opt.ridge * std::max(Gm.trace() / double(D), 1e-30);
            Gm.diagonal().array() += lambda;
            const Eigen::LLT<Eigen::MatrixXd> llt(Gm);
            if (llt.info() != Eigen::Success)
                throw Error(fmt::format(
                    "layer {}: the calibration Gram matrix is not positive definite; raise --ridge", l));
            const Eigen::MatrixXd Lc = llt.matrixL();                     // [D, D] lower
            const MatD M = W * Lc;                                        // [2·G·dh, D]
            auto lr = approx->approximate(M, opt.rank, rng);
            left = lr.left;
            // Wdown = right · L⁻¹  ⇔  Lᵀ Wdownᵀ = rightᵀ  (upper-triangular solve)
            const Eigen::MatrixXd rt = lr.right.transpose();
            down = Lc.transpose().triangularView<Eigen::Upper>().solve(rt).transpose();
        } else {
            auto lr = approx->approximate(W, opt.rank, rng);
            left = lr.left;
            down = lr.right;
        }
        out.tensors.push_back(to_tensor(pre + "w_dkv", down));
        out.tensors.push_back(to_tensor(pre + "w_uk", left.topRows(Gdh)));
        out.tensors.push_back(to_tensor(pre + "w_uv", left.bottomRows(Gdh)));
        ++compressed;
        if (report) {
            LayerCompression c;
            c.layer = l;
            const MatD E = W - left * down;                               // W − W'
            c.weight_rel_error = E.norm() / std::max(W.norm(), 1e-300);
            if (!grams.empty()) {
                // ‖X Eᵀ‖_F² = tr(E XᵀX Eᵀ)
                const double num = (E * grams[l]).cwiseProduct(E).sum(), den = (W * grams[l]).cwiseProduct(W).sum();
                c.output_rel_error = std::sqrt(std::max(num, 0.0) / std::max(den, 1e-300));
            }
            report->push_back(c);
        }
    }
    if (compressed != cfg.n_layers)
        throw Error(fmt::format("the checkpoint has {} attn.wk tensors for {} layers", compressed, cfg.n_layers));
    return out;
}

}  // namespace kvlab
