// The attention plugin interface. Every variant (MHA/GQA/MQA, MLA, latent_kv, ...)
// implements it; the model, trainer, CLI and tests only ever see this.
//
// Conventions for every plugin (read this before writing one):
//   * Rows are tokens: in/out/din/dout are [B*T, D], batch-major (row b*T + t).
//   * forward WRITES out (=) and keeps what backward needs in the plugin's own buffers,
//     which are (re)allocated only when (B, T) changes, never per step.
//   * backward WRITES din (=) and ACCUMULATES parameter gradients (+=); the trainer
//     zeroes the gradient arena once per step. It uses the activations of the most
//     recent forward. The residual add is the block's job, not the plugin's.
//   * Causal: output row t depends only on input rows <= t of the same sequence.
//   * Parameters live in the model's arenas; bind() hands the plugin pointers to its
//     tensors by the local names of param_specs() (model.md names, e.g. "wq").
//   * Decode: the cache object allocates exactly what the variant caches per token
//     (kv_elements_per_token() elements per token per layer) for max_T tokens; any
//     per-step scratch it needs is separate and not counted in bytes().
//   * Templated on the scalar: float for training, double for gradient checks.
#pragma once

#include "core/error.h"
#include "core/tensor.h"

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kvlab {

struct ModelConfig;

// Pointers into a parameter (or gradient) arena, by local name.
template <class S>
class ParamViews {
public:
    void add(const std::string& name, S* data, std::vector<int64_t> shape) {
        entries_[name] = {data, std::move(shape)};
    }
    // The tensor called `name`; its shape must be `shape` (a mismatch is a bug).
    S* get(const std::string& name, const std::vector<int64_t>& shape) const {
        auto it = entries_.find(name);
        KV_CHECK(it != entries_.end(), "no parameter named '{}'", name);
        KV_CHECK(it->second.second == shape, "parameter '{}' has an unexpected shape", name);
        return it->second.first;
    }

private:
    std::map<std::string, std::pair<S*, std::vector<int64_t>>> entries_;
};

// The per-layer KV cache used by autoregressive decoding.
class DecodeCache {
public:
    virtual ~DecodeCache() = default;
    // Bytes allocated for cached per-token state: max_T * kv_elements_per_token * sizeof(S).
    virtual int64_t bytes() const = 0;
    int max_T = 0;
    int length = 0;   // tokens cached so far; decode_step appends at position `length`
};

template <class S>
class Attention {
public:
    using Mat = MatT<S>;
    using Ref = RefT<S>;
    using CRef = CRefT<S>;

    virtual ~Attention() = default;
    virtual std::string_view name() const = 0;

    // Trainable tensors with model.md's local names and shapes; the model prefixes
    // "layers.{l}.attn." and lays them out in the arenas in this order.
    virtual std::vector<ParamSpec> param_specs() const = 0;
    // The plugin's resolved hyper-parameters, written as checkpoint attributes
    // (e.g. n_kv_heads for the MHA family; kv_lora_rank, q_lora_rank, qk_rope_head_dim for MLA).
    virtual std::vector<std::pair<std::string, double>> hyper_params() const = 0;
    virtual void bind(const ParamViews<S>& params, const ParamViews<S>& grads) = 0;

    virtual void forward(int B, int T, CRef in, Ref out) = 0;   // in, out: [B*T, D]
    virtual void backward(CRef dout, Ref din) = 0;              // dout, din: [B*T, D]
    // Bytes of the buffers forward/backward allocated for the last (B, T): activations kept
    // for backward and backward scratch (kvlab bench's memory count). 0 = not reported.
    virtual int64_t activation_bytes() const { return 0; }

    // KV-cache elements per token per layer, model.md's formula (2*G*dh; MLA: d_c + d_R).
    virtual int64_t kv_elements_per_token() const = 0;
    // Decode implementations this plugin offers; the first is the default.
    virtual std::vector<std::string> decode_impls() const { return {"default"}; }
    virtual std::unique_ptr<DecodeCache> new_decode_cache(int max_T, std::string_view impl = {}) const = 0;
    // x_t, out_t: [1, D]. Appends this token's cached state at position cache.length and
    // writes the attention output for it; advances cache.length.
    virtual void decode_step(DecodeCache& cache, CRef x_t, Ref out_t) const = 0;
};

}  // namespace kvlab
