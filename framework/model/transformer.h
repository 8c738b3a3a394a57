// The decoder-only transformer of model.md, with hand-written forward and backward:
//   x_0 = embed[tokens]
//   h = x_l + Attn_l(RMSNorm(x_l; attn_norm_l));  x_{l+1} = h + MLP_l(RMSNorm(h; mlp_norm_l))
//   logits = RMSNorm(x_L; final_norm) lm_headᵀ;  loss = mean CE over targets != -1
// Parameters and gradients live in two flat arenas laid out from one ParamSpec list
// (full dotted names of model.md); checkpoints and gradient dumps are written from the
// same list. Activations are allocated once per (B, T).
#pragma once

#include "attention/attention.h"
#include "config/experiment_config.h"
#include "core/tensor.h"

#include <memory>
#include <string>
#include <vector>

namespace kvlab {

struct NamedParam {
    ParamSpec spec;      // full dotted name, e.g. "layers.0.attn.wq"
    int64_t offset = 0;  // into the arenas
};

template <class S>
class Transformer {
public:
    using Mat = MatT<S>;

    explicit Transformer(const ModelConfig& cfg);
    // A replica: the configuration of `parameters_of` and a view of its parameter arena
    // (which must outlive the replica), with its own gradient arena and activations. Data
    // parallelism over threads runs one per batch shard (model/batch_split.h).
    struct ReplicaOf {
        Transformer& parameters_of;
    };
    explicit Transformer(ReplicaOf r);
    ~Transformer();
    Transformer(const Transformer&) = delete;
    Transformer& operator=(const Transformer&) = delete;

    const ModelConfig& config() const { return cfg_; }
    const std::vector<NamedParam>& params() const { return params_; }
    int64_t n_params() const { return static_cast<int64_t>(grad_.size()); }
    S* param_data() { return theta_ptr_; }
    const S* param_data() const { return theta_ptr_; }
    S* grad_data() { return grad_.data(); }
    const S* grad_data() const { return grad_.data(); }
    const NamedParam& find(const std::string& name) const;   // InternalError if absent

    // model.md's default: every matrix and the embedding normal(0, 0.02), gains 1.
    void init(uint64_t seed);
    void zero_grad();

    // inputs, targets: [B*T] token ids; targets may be null (logits only). Returns the
    // mean cross-entropy over targets != -1 (0 when none), accumulated in double.
    double forward(const int32_t* inputs, const int32_t* targets, int B, int T);
    // Accumulates d loss / d θ into the gradient arena, for the last forward with targets.
    // With a denominator > 0 the loss differentiated is the sum of this forward's losses
    // over `denominator` instead of their mean: a batch shard's part of the whole batch's mean.
    void backward(int64_t denominator = 0);
    // Targets != -1 in the last forward.
    int64_t n_scored() const { return n_scored_; }

    const Mat& logits() const { return logits_; }   // [B*T, V]
    // Among targets != -1 of the last forward: how many, and how many argmax-correct.
    void count_correct(const int32_t* targets, int64_t& scored, int64_t& correct) const;

    Attention<S>& attention(int layer) { return *attn_[layer]; }
    // The RMSNorm'd input of layer `layer`'s attention in the last forward, [B*T, D]: what
    // the plugin saw (post-hoc KV compression calibrates on it, lowrank/compress.h).
    const Mat& attention_input(int layer) const;
    // Summed over all layers.
    int64_t kv_elements_per_token() const;
    // The hyper-parameters as checkpoint attributes (model.md), attention included.
    std::vector<std::pair<std::string, double>> hyper_params() const;

    // Autoregressive decoding through each plugin's KV cache.
    struct DecodeState {
        std::vector<std::unique_ptr<DecodeCache>> layers;
        int64_t bytes() const;   // allocated KV-cache bytes over all layers
        int length() const { return layers.empty() ? 0 : layers[0]->length; }
    };
    DecodeState new_decode_state(int max_T, const std::string& impl = {}) const;
    // Feeds one token at position state.length(); writes logits [V].
    void decode_step(DecodeState& state, int32_t token, S* logits_out);

    // Optional wall-clock seconds per part of forward/backward (kvlab bench), added up
    // while set_op_timing(true); off by default, when each part costs one untaken branch.
    struct OpTimes {
        double embed = 0;                  // x_0 = embed[tokens] and its scatter-add backward
        double norm_fwd = 0, norm_bwd = 0;  // the blocks' RMSNorms and residual adds
        double attn_fwd = 0, attn_bwd = 0;  // the attention plugins
        double mlp_fwd = 0, mlp_bwd = 0;    // SwiGLU MLPs: GEMMs and activation
        double head_fwd = 0, head_bwd = 0;  // final RMSNorm, lm_head, cross-entropy
        double total() const {
            return embed + norm_fwd + norm_bwd + attn_fwd + attn_bwd + mlp_fwd + mlp_bwd + head_fwd + head_bwd;
        }
    };
    void set_op_timing(bool on) { timing_ = on; }
    OpTimes& op_times() { return op_times_; }
    // Bytes of the activation buffers allocated for the last forward's (B, T): the model's
    // (kept for backward and backward scratch) and every plugin's (Attention::activation_bytes).
    int64_t activation_bytes() const;

private:
    struct Layer;
    ModelConfig cfg_;
    int D_, V_, F_, L_;
    std::vector<NamedParam> params_;
    // Aligned to EIGEN_MAX_ALIGN_BYTES: Eigen's vectorised reductions over a Map peel a
    // head that depends on the address, so a malloc-aligned arena made results depend on
    // where the heap put it (two runs in one process differed in the last bits).
    std::vector<S, Eigen::aligned_allocator<S>> theta_, grad_;   // theta_ is empty in a replica
    S* theta_ptr_ = nullptr;   // the parameters: theta_, or the arena a replica views
    std::vector<std::unique_ptr<Attention<S>>> attn_;
    std::vector<std::unique_ptr<Layer>> layers_;

    // Activations (sized by resize()).
    int B_ = 0, T_ = 0;
    std::vector<int32_t> inputs_, targets_;
    Mat xf_, xnf_;                // [B*T, D] final residual and its norm
    Eigen::Matrix<S, Eigen::Dynamic, 1> rf_;   // [B*T] final-norm inverse rms
    Mat logits_, probs_;          // [B*T, V]; backward turns probs_ into dlogits
    std::vector<double> row_loss_;  // [B*T]
    Mat dx_, dh_, dxn_, dtmp_, work_;   // [B*T, D] backward scratch
    Mat dab_;                     // [B*T, 2F] backward scratch: d of gate | up pre-activations
    Mat dhmid_;                   // [B*T, F] backward scratch
    Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor> wgrad_;   // [2F, D] (ops::add_weight_grad)
    int64_t n_scored_ = 0;
    bool has_targets_ = false;
    // Decode scratch
    Mat dec_x_, dec_xn_, dec_tmp_, dec_h_, dec_ab_, dec_hmid_;
    bool timing_ = false;
    OpTimes op_times_;

    Transformer(const ModelConfig& cfg, S* shared_theta);
    void resize(int B, int T);
    S* p(const std::string& name);
    S* g(const std::string& name);
};

extern template class Transformer<float>;
extern template class Transformer<double>;

}  // namespace kvlab
