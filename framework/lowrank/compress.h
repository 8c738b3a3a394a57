// Post-hoc KV-cache compression: an MHA/GQA/MQA checkpoint becomes a latent_kv checkpoint
// (framework/attention/latent_kv.cpp) that caches r numbers per token and layer instead of
// 2·G·dh, by factoring each layer's stacked key/value projection at rank r:
//   W = [wk; wv]                     [2·G·dh, D]
//   W ≈ [Uk; Uv] · Wdown             Uk, Uv [G·dh, r], Wdown [r, D]
//   w_dkv = Wdown, w_uk = Uk, w_uv = Uv; wq, wo and every other tensor are copied.
// Since k = RoPE(x wkᵀ) and RoPE acts after the projection, the latent_kv layer computes
// exactly RoPE(x W'_kᵀ) with W' = [Uk; Uv]·Wdown: the only change is W → W'.
//
// Weight-only: any registered approximator factors W itself (minimises ‖W − W'‖_F).
// Data-aware (SVD-LLM's truncation-aware whitening, Wang et al. arXiv 2403.07378): what
// matters is the layer's output on real inputs, ‖X Wᵀ − X W'ᵀ‖_F for the attention
// inputs X [N, D] (RMSNorm'd residual stream). With XᵀX + λI = L Lᵀ (Cholesky, L lower;
// SVD-LLM's S = Lᵀ), ‖(W − W') L‖_F² = ‖X(W − W')ᵀ‖_F² + λ‖W − W'‖_F², so
//   factor M = W L ≈ left · right,  then  Uk;Uv = left,  Wdown = right · L⁻¹ (= R·S⁻ᵀ)
// and with svd the result is the optimal rank-r W' for the calibration data (up to λ).
#pragma once

#include "core/rng.h"
#include "core/tensor.h"
#include "io/results.h"
#include "lowrank/lowrank.h"
#include "model/transformer.h"
#include "tasks/task.h"

#include <string>
#include <vector>

namespace kvlab {

struct CompressOptions {
    int rank = 0;                   // r = latent_rank of the result, 1 <= r <= min(2·G·dh, d_model)
    std::string method = "svd";     // a lowrank_registry() name
    LowRankOptions method_options;  // that method's own options
    uint64_t seed = 0;              // the Rng of randomized methods (one stream, layers in order)
    bool data_aware = false;        // whiten with the calibration Gram matrices (needs grams)
    double ridge = 1e-6;            // λ = ridge · mean(diag(XᵀX)), keeps the Cholesky factor invertible
};

// What one layer's factorisation cost, W = [wk; wv], W' its rank-r replacement.
struct LayerCompression {
    int layer = 0;
    double weight_rel_error = 0;    // ‖W − W'‖_F / ‖W‖_F
    double output_rel_error = -1;   // ‖X(W − W')ᵀ‖_F / ‖X Wᵀ‖_F on the calibration inputs; -1 without grams
};

// Per layer, Σ XᵀX over `batches` batches of `batch_size` sequences drawn from task.train_batch
// with `rng`, where X [B*T, D] is the RMSNorm'd input of that layer's attention. [D, D] each,
// accumulated in double. Runs forward only (no targets).
template <class S>
std::vector<MatD> attention_input_grams(Transformer<S>& model, const Task& task, int batches, int batch_size, Rng& rng);

// G, the K/V heads of an mha, gqa or mqa model (H, n_kv_heads, 1), and the largest useful
// rank min(2·G·dh, D). kvlab::Error for another attention.
struct CompressDims {
    int n_kv_heads = 0;
    int max_rank = 0;
};
CompressDims compress_dims(const ModelConfig& src);

// The latent_kv ParamSet for `src` (an mha, gqa or mqa checkpoint: attrs and tensors as
// model.md). Attributes are copied, with attention = "latent_kv", latent_rank = r and
// n_kv_heads = G (H for mha, 1 for mqa). grams (one [D, D] per layer, from
// attention_input_grams) are required when opt.data_aware and, when given, also yield
// output_rel_error in `report`. kvlab::Error for another attention, an impossible rank,
// an unknown method or missing tensors.
ParamSet compress_to_latent_kv(const ParamSet& src, const CompressOptions& opt, const std::vector<MatD>& grams = {},
                               std::vector<LayerCompression>* report = nullptr);

}  // namespace kvlab
